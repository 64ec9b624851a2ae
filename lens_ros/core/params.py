"""Node parameters: one dataclass is the single source of names, defaults, documentation and checks.

ROS parameter names are dotted (``model.name``); the rclpy adapter declares them from
``parameter_specs()``, the DDS transport and bag mode read them from a ``ros__parameters`` YAML.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lens_model.builtin import DEMO_MODEL
from lens_model.prompts import DEFAULT_MAX_QUERY_CHARS

RELIABILITIES = ("reliable", "best_effort")
QUEUE_POLICIES = ("drop_oldest", "reject_new")
TEMPLATES = ("auto", "reasoning", "direct")
TRACK_MODES = ("box", "memory")  # lens_model.tracker.TrackMode


class ParameterError(ValueError):
    """A parameter value or parameters file that the node cannot use."""


def _param(default: Any, ros_name: str, doc: str, **checks: Any) -> Any:
    return field(default=default, metadata={"ros_name": ros_name, "doc": doc, **checks})


@dataclass(frozen=True)
class LensParams:
    autostart: bool = _param(True, "autostart", "Configure and activate the lifecycle node at start (rclpy transport).")
    model_name: str = _param(
        DEMO_MODEL, "model.name",
        "Model id or local path for lens_model.load_model (GPU robots: OuyBin/LENS).", nonempty=True)
    device: str = _param("cpu", "model.device", "Torch device, e.g. cpu, cuda, cuda:1.", nonempty=True)
    dtype: str = _param("auto", "model.dtype", "auto, float32, bfloat16 or float16.", nonempty=True)
    template: str = _param(
        "auto", "model.template",
        "Reasoning on/off: reasoning = think before answering, direct = answer only, "
        "auto = the model's trained default.", choices=TEMPLATES)
    max_new_tokens: int = _param(
        256, "model.max_new_tokens", "Generation budget per query; 0 = model default.", minimum=0)
    image_topic: str = _param(
        "/camera/image_raw", "topics.image", "sensor_msgs/Image input (remappable).", nonempty=True)
    compressed_image_topic: str = _param(
        "", "topics.compressed_image", "Optional sensor_msgs/CompressedImage input; empty = off.")
    query_topic: str = _param(
        "query", "topics.query", "std_msgs/String queries (relative to the namespace).", nonempty=True)
    mask_topic: str = _param("mask", "topics.mask", "mono8 mask output: every instance's pixels.", nonempty=True)
    instances_topic: str = _param(
        "instances", "topics.instances", "mono8 instance image output: 0 background, i + 1 instance i.",
        nonempty=True)
    detections_topic: str = _param(
        "detections", "topics.detections", "vision_msgs/Detection2DArray output: one detection per instance.",
        nonempty=True)
    reasoning_topic: str = _param("reasoning", "topics.reasoning", "std_msgs/String reasoning output.", nonempty=True)
    result_topic: str = _param("result", "topics.result", "std_msgs/String JSON result, one per query.", nonempty=True)
    debug_image_topic: str = _param("debug_image", "topics.debug_image", "Overlay image output.", nonempty=True)
    diagnostics_topic: str = _param(
        "/diagnostics", "topics.diagnostics", "diagnostic_msgs/DiagnosticArray output.", nonempty=True)
    track_mask_topic: str = _param("track/mask", "topics.track_mask", "mono8 mask of each tracked frame.",
                                   nonempty=True)
    track_instances_topic: str = _param(
        "track/instances", "topics.track_instances",
        "mono8 instance image of each tracked frame: 0 background, i + 1 instance i.", nonempty=True)
    track_detections_topic: str = _param(
        "track/detections", "topics.track_detections", "vision_msgs/Detection2DArray of each tracked frame.",
        nonempty=True)
    track_status_topic: str = _param(
        "track/status", "topics.track_status", "std_msgs/String JSON status of each tracked frame.", nonempty=True)
    track_stop_topic: str = _param(
        "track/stop", "topics.track_stop", "std_msgs/String input: any message stops the track.", nonempty=True)
    max_frame_age_s: float = _param(
        1.0, "frames.max_age_s", "Queries fail when the newest frame is older than this; 0 disables.", minimum=0.0)
    max_frame_future_s: float = _param(
        0.5, "frames.max_future_s",
        "Clock-skew tolerance: queries fail when the newest frame is stamped further ahead of this host's clock; "
        "0 disables.", minimum=0.0)
    queue_size: int = _param(4, "queries.queue_size", "Pending queries kept while one is running.", minimum=1)
    queue_full_policy: str = _param(
        "drop_oldest", "queries.full_policy",
        "When the queue is full: drop_oldest fails the oldest pending query, reject_new fails the new one.",
        choices=QUEUE_POLICIES)
    max_query_length: int = _param(DEFAULT_MAX_QUERY_CHARS, "queries.max_length", "Longest accepted query, in characters.", minimum=1)
    image_reliability: str = _param(
        "reliable", "qos.image_reliability",
        "Image subscription reliability: reliable gets whole large frames on Fast DDS and CycloneDDS, but nothing "
        "from a best-effort camera; best_effort matches any camera but loses large frames (docs/ros.md).",
        choices=RELIABILITIES)
    image_depth: int = _param(1, "qos.image_depth", "Image subscription history depth.", minimum=1)
    query_depth: int = _param(
        1000, "qos.query_depth",
        "Query subscription history depth (reliable): the largest burst held before the node takes it.", minimum=1)
    output_reliability: str = _param(
        "reliable", "qos.output_reliability", "Reliability of all outputs.", choices=RELIABILITIES)
    output_depth: int = _param(10, "qos.output_depth", "History depth of all outputs but the result.", minimum=1)
    result_depth: int = _param(
        1000, "qos.result_depth", "History depth of the result output: the largest burst of results kept.", minimum=1)
    debug_image: bool = _param(False, "debug_image.enabled", "Publish the frame with mask, box and label drawn.")
    debug_image_max_rate_hz: float = _param(
        2.0, "debug_image.max_rate_hz", "Upper bound on debug image rate.", exclusive_minimum=0.0)
    diagnostics_period_s: float = _param(
        1.0, "diagnostics.period_s", "Diagnostics publishing period.", exclusive_minimum=0.0)
    tracking: bool = _param(
        False, "tracking.enabled", "After a query that found its target, track it on every new frame.")
    track_mode: str = _param(
        "box", "tracking.mode",
        "box: the previous mask's box prompts SAM 2 on the new frame (any weights); memory: SAM 2's video memory "
        "(needs tracking.memory_weights for checkpoints without it).", choices=TRACK_MODES)
    track_max_rate_hz: float = _param(
        15.0, "tracking.max_rate_hz", "Most track steps per second; frames in between are dropped (counted).",
        exclusive_minimum=0.0)
    track_box_margin: float = _param(
        0.1, "tracking.box_margin", "box mode: the previous box grows by this fraction of its size.",
        minimum=0.0, maximum=1.0)
    track_min_score: float = _param(
        0.3, "tracking.min_score", "A step scoring below this is lost.", minimum=0.0, maximum=1.0)
    track_min_area_ratio: float = _param(
        0.25, "tracking.min_area_ratio", "A mask shrinking below this fraction of the previous one is lost.",
        minimum=0.0, maximum=1.0)
    track_max_area_ratio: float = _param(
        1.5, "tracking.max_area_ratio", "A mask growing beyond this multiple of the previous one is lost.",
        minimum=1.0)
    track_memory_weights: str = _param(
        "", "tracking.memory_weights",
        "memory mode: a SAM 2 checkpoint of the same size holding the memory modules; empty = the model's own.")
    reacquire_period_s: float = _param(
        0.0, "tracking.reacquire_period_s", "Re-run the query of a track this often; 0 = never.", minimum=0.0)
    reacquire_on_lost: bool = _param(
        True, "tracking.reacquire_on_lost",
        "Re-run the query when a frame of its track is lost; its answer replaces or ends the track.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f, getattr(self, f.name)))

    @classmethod
    def from_ros(cls, values: Mapping[str, Any]) -> LensParams:
        """Build from dotted ROS names; unknown names are an error so that typos do not pass silently."""
        by_ros_name = {f.metadata["ros_name"]: f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(by_ros_name))
        if unknown:
            raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(by_ros_name))}")
        return cls(**{by_ros_name[name]: value for name, value in values.items()})


@dataclass(frozen=True)
class ParamSpec:
    ros_name: str
    default: Any
    doc: str


def parameter_specs() -> list[ParamSpec]:
    return [ParamSpec(f.metadata["ros_name"], f.default, f.metadata["doc"]) for f in dataclasses.fields(LensParams)]


_PY_TYPES = {"bool": bool, "str": str, "int": int, "float": float}


def command_line_overrides(
    model: str | None = None,
    device: str | None = None,
    image_topic: str | None = None,
    debug_image: bool | None = None,
    tracking: bool | None = None,
) -> dict[str, Any]:
    """ROS parameter values for the shortcuts lens_node, lens-bag and the launch file offer; None = not given."""
    given = {"model.name": model, "model.device": device, "topics.image": image_topic,
             "debug_image.enabled": debug_image, "tracking.enabled": tracking}
    return {name: value for name, value in given.items() if value is not None}


def _checked(f: dataclasses.Field, value: Any) -> Any:
    """Return ``value`` (ints widened to float for float parameters) or raise ParameterError."""
    name = f.metadata["ros_name"]
    expected = _PY_TYPES[f.type]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ParameterError(f"parameter {name} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    if expected is float and not math.isfinite(value):  # NaN passes every comparison below
        raise ParameterError(f"parameter {name} must be a finite number, got {value!r}")
    meta = f.metadata
    if meta.get("nonempty") and not value:
        raise ParameterError(f"parameter {name} must not be empty")
    if "choices" in meta and value not in meta["choices"]:
        raise ParameterError(f"parameter {name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if "minimum" in meta and value < meta["minimum"]:
        raise ParameterError(f"parameter {name} must be >= {meta['minimum']}, got {value!r}")
    if "maximum" in meta and value > meta["maximum"]:
        raise ParameterError(f"parameter {name} must be <= {meta['maximum']}, got {value!r}")
    if "exclusive_minimum" in meta and value <= meta["exclusive_minimum"]:
        raise ParameterError(f"parameter {name} must be > {meta['exclusive_minimum']}, got {value!r}")
    return value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"name": x}}`` -> ``{"model.name": x}`` (the ROS 2 YAML nesting convention)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_params_file(path: str | Path, node_name: str = "lens_node", namespace: str = "/lens") -> dict[str, Any]:
    """Read the ``ros__parameters`` a ROS 2 params file gives this node, as dotted names.

    Sections apply in the order ROS 2 uses: the ``/**`` wildcard, then the node name, then the
    fully qualified name, later ones overriding earlier ones.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ParameterError(f"cannot read parameters file {path}: {exc}") from exc
    if not isinstance(document, Mapping):
        raise ParameterError(f"parameters file {path} must hold a mapping of node names to ros__parameters")
    fully_qualified = f"{namespace.rstrip('/')}/{node_name}"
    values: dict[str, Any] = {}
    for section in ("/**", node_name, fully_qualified, fully_qualified.lstrip("/")):
        body = document.get(section)
        if body is None:
            continue
        if not isinstance(body, Mapping) or not isinstance(body.get("ros__parameters"), Mapping):
            raise ParameterError(f"section {section!r} of {path} must contain a ros__parameters mapping")
        values.update(flatten(body["ros__parameters"]))
    return values
