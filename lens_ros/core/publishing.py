"""Turns a QueryOutcome, or a TrackEvent, into output messages and hands them to the transport's sink."""
from __future__ import annotations

import dataclasses
import enum
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lens_ros.core import messages
from lens_ros.core.image_codec import encode_image, mask_to_mono8
from lens_ros.core.outcome import ERROR, NO_TARGET, TRACKING, QueryOutcome, TrackEvent
from lens_model.instance_tracks import frame_mask
from lens_model.visualize import draw_overlay

log = logging.getLogger(__name__)


class Output(str, enum.Enum):
    MASK = "mask"
    INSTANCES = "instances"
    DETECTIONS = "detections"
    REASONING = "reasoning"
    RESULT = "result"
    DEBUG_IMAGE = "debug_image"
    DIAGNOSTICS = "diagnostics"
    TRACK_MASK = "track_mask"
    TRACK_INSTANCES = "track_instances"
    TRACK_DETECTIONS = "track_detections"
    TRACK_STATUS = "track_status"


Sink = Callable[[Output, Any], None]

# The ROS 2 message type of each output.
OUTPUT_TYPES = {
    Output.MASK: "sensor_msgs/msg/Image",
    Output.INSTANCES: "sensor_msgs/msg/Image",
    Output.DETECTIONS: "vision_msgs/msg/Detection2DArray",
    Output.REASONING: "std_msgs/msg/String",
    Output.RESULT: "std_msgs/msg/String",
    Output.DEBUG_IMAGE: "sensor_msgs/msg/Image",
    Output.DIAGNOSTICS: "diagnostic_msgs/msg/DiagnosticArray",
    Output.TRACK_MASK: "sensor_msgs/msg/Image",
    Output.TRACK_INSTANCES: "sensor_msgs/msg/Image",
    Output.TRACK_DETECTIONS: "vision_msgs/msg/Detection2DArray",
    Output.TRACK_STATUS: "std_msgs/msg/String",
}


def output_topics(params: Any) -> dict[Output, str]:
    """The (unresolved) topic name of every enabled output; the debug image and the track outputs only
    when switched on."""
    names = {
        Output.MASK: params.mask_topic,
        Output.INSTANCES: params.instances_topic,
        Output.DETECTIONS: params.detections_topic,
        Output.REASONING: params.reasoning_topic,
        Output.RESULT: params.result_topic,
        Output.DIAGNOSTICS: params.diagnostics_topic,
    }
    if params.debug_image:
        names[Output.DEBUG_IMAGE] = params.debug_image_topic
    if params.tracking:
        names[Output.TRACK_MASK] = params.track_mask_topic
        names[Output.TRACK_INSTANCES] = params.track_instances_topic
        names[Output.TRACK_DETECTIONS] = params.track_detections_topic
        names[Output.TRACK_STATUS] = params.track_status_topic
    return names


def history_depth(params: Any, output: Output) -> int:
    """KEEP_LAST depth of an output's publisher: results come in bursts (one per query, also when a full
    queue drops queries), so they keep ``qos.result_depth``; the others at most one per inference."""
    return params.result_depth if output is Output.RESULT else params.output_depth


def message_class_name(output: Output) -> str:
    """``Image`` for ``sensor_msgs/msg/Image``: the class name transports look the type up by."""
    return OUTPUT_TYPES[output].rsplit("/", 1)[1]


class RateLimiter:
    """Allows at most one event per ``1 / max_rate_hz`` seconds of the given clock."""

    def __init__(self, max_rate_hz: float, clock: Callable[[], float]) -> None:
        self._period = 1.0 / max_rate_hz
        self._clock = clock
        self._last: float | None = None

    def allow(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self._period:
            return False
        self._last = now
        return True


class OutcomePublisher:
    """Publishes one outcome: for ``ok``, ``no_target`` and ``no_box`` the mask (the union of the
    instances), the instance image, the detections (one per instance), the reasoning and (rate-limited,
    if enabled) the debug image, all stamped with the frame's header, then always the JSON result last,
    so a consumer that sees the result has already been sent the rest.

    ``no_target`` publishes an all-zero mask and instance image of the frame's size and an empty
    detection array: a definite "nothing matches". ``no_box`` publishes the mask SAM 2 gave without a
    usable box (as before instances existed), an all-zero instance image and an empty detection array.

    Called from the worker and from the query callback (for queue evictions), hence the lock.
    """

    def __init__(self, kit: Any, sink: Sink, debug_limiter: RateLimiter | None) -> None:
        self._kit = kit
        self._sink = sink
        self._debug_limiter = debug_limiter
        self._lock = threading.Lock()

    def publish(self, outcome: QueryOutcome, rgb: np.ndarray | None = None) -> QueryOutcome:
        """Publish and return the outcome actually published (an error one if outputs could not be built)."""
        with self._lock:
            try:
                frame_outputs = self._frame_outputs(outcome, rgb)
                result_json = outcome.to_json()
            except Exception as exc:  # a malformed model result must still yield exactly one result
                log.exception("cannot build outputs for query %d", outcome.query_id)
                outcome = QueryOutcome.failure(
                    outcome.query_id, outcome.query, f"cannot build output messages: {type(exc).__name__}: {exc}",
                    frame=outcome.frame, frame_age_s=outcome.frame_age_s, trigger=outcome.trigger,
                    origin_query_id=outcome.origin_query_id)
                frame_outputs = []
                result_json = outcome.to_json()
            for output, msg in frame_outputs:
                self._sink(output, msg)
            self._sink(Output.RESULT, messages.string(self._kit, result_json))
            return outcome

    def _frame_outputs(self, outcome: QueryOutcome, rgb: np.ndarray | None) -> list[tuple[Output, Any]]:
        if outcome.status == ERROR or outcome.result is None or outcome.frame is None:
            return []
        kit, result = self._kit, outcome.result
        hdr = messages.header(kit, outcome.frame.stamp, outcome.frame.frame_id)
        mask = np.zeros_like(result.mask) if result.status == NO_TARGET else result.mask
        outputs = [(Output.MASK, messages.image(kit, hdr, encode_image(mask_to_mono8(mask), "mono8"))),
                   (Output.INSTANCES, messages.image(kit, hdr, encode_image(result.instance_map(), "mono8")))]
        if kit.has_detections:  # not on an rclpy node without vision_msgs
            outputs.append((Output.DETECTIONS, messages.detections(kit, hdr, outcome)))
        outputs.append((Output.REASONING, messages.string(kit, result.reasoning)))
        if rgb is not None and self._debug_limiter is not None and self._debug_limiter.allow():
            overlay = draw_overlay(rgb, result)
            outputs.append((Output.DEBUG_IMAGE, messages.image(kit, hdr, encode_image(overlay, "rgb8"))))
        return outputs


class TrackPublisher:
    """Publishes one track event: for ``tracking`` the mask (every instance's), the instance image and the
    detections (one per instance tracked on the frame), stamped with the header of the frame the step ran
    on, then always the JSON status last (alone for ``lost``, ``error`` and ``stopped``).

    ``labels`` are the detections' ``class_id`` per instance: the grounded labels of the query that seeded
    the track; a detection's ``id`` is the instance's, as on the query's own detections.
    """

    def __init__(self, kit: Any, sink: Sink) -> None:
        self._kit = kit
        self._sink = sink
        self._lock = threading.Lock()

    def publish(self, event: TrackEvent, labels: Sequence[str] = ()) -> None:
        with self._lock:
            try:
                frame_outputs = self._frame_outputs(event, labels)
                status_json = event.to_json()
            except Exception as exc:  # the frame still gets its status
                log.exception("cannot build track outputs for query %d", event.query_id)
                event = dataclasses.replace(event, status=ERROR, score=None, box=None, mask_area=None, instances=(),
                                            error=f"cannot build output messages: {type(exc).__name__}: {exc}")
                frame_outputs = []
                status_json = event.to_json()
            for output, msg in frame_outputs:
                self._sink(output, msg)
            self._sink(Output.TRACK_STATUS, messages.string(self._kit, status_json))

    def _frame_outputs(self, event: TrackEvent, labels: Sequence[str]) -> list[tuple[Output, Any]]:
        if event.frame is None or event.status != TRACKING:
            return []
        kit = self._kit
        hdr = messages.header(kit, event.frame.stamp, event.frame.frame_id)
        shape = next(step.mask.shape for step in event.instances if step.mask is not None)
        mask, instances = frame_mask(event.instances, shape)
        outputs = [(Output.TRACK_MASK, messages.image(kit, hdr, encode_image(mask_to_mono8(mask), "mono8"))),
                   (Output.TRACK_INSTANCES, messages.image(kit, hdr, encode_image(instances, "mono8")))]
        if kit.has_detections:
            found = [messages.detection(kit, hdr, step.box, label, step.score, messages.detection_id(event.query_id, n))
                     for n, (step, label) in enumerate(zip(event.instances, labels, strict=True), start=1)
                     if step.status == TRACKING and step.box is not None]
            outputs.append((Output.TRACK_DETECTIONS, kit.Detection2DArray(header=hdr, detections=found)))
        return outputs
