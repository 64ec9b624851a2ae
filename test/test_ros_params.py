"""Parameters, the shipped config/lens.yaml, topic names and the lens_node command line."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from lens_ros.core.names import dds_topic_name, resolve_topic
from lens_ros.core.params import LensParams, ParameterError, flatten, parameter_specs, read_params_file
from lens_ros.lens_node import build_parser, overrides, rcl_arguments, split_ros_args
from lens_ros.lens_node import main as lens_node_main

CONFIG = Path(__file__).resolve().parents[1] / "config" / "lens.yaml"


def test_shipped_config_lists_every_parameter_with_the_code_default():
    document = yaml.safe_load(CONFIG.read_text())
    assert list(document) == ["/**"]
    values = flatten(document["/**"]["ros__parameters"])
    assert sorted(values) == sorted(spec.ros_name for spec in parameter_specs())
    assert LensParams.from_ros(values) == LensParams()


def test_docs_describe_every_parameter():
    docs = (CONFIG.parents[1] / "docs" / "ros.md").read_text()
    missing = [spec.ros_name for spec in parameter_specs() if f"`{spec.ros_name}`" not in docs]
    assert missing == []


def test_default_model_is_the_cpu_demo_not_random_weights():
    assert LensParams().model_name == "lens-synth-demo"


def test_sections_apply_wildcard_then_node_then_fully_qualified(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "/**:\n  ros__parameters:\n    model: {name: a, device: cpu}\n    queries: {queue_size: 2}\n"
        "lens_node:\n  ros__parameters:\n    model: {name: b}\n"
        "/robot/lens_node:\n  ros__parameters:\n    queries: {queue_size: 7}\n"
        "other_node:\n  ros__parameters:\n    model: {name: c}\n")
    values = read_params_file(path, "lens_node", "/robot")
    assert values == {"model.name": "b", "model.device": "cpu", "queries.queue_size": 7}


@pytest.mark.parametrize("values, message", [
    ({"model.nmae": "x"}, "unknown parameter(s) model.nmae"),
    ({"queries.queue_size": "4"}, "queries.queue_size must be int, got str"),
    ({"queries.queue_size": 0}, "queries.queue_size must be >= 1"),
    ({"queries.full_policy": "drop_newest"}, "must be one of drop_oldest, reject_new"),
    ({"qos.image_reliability": "maybe"}, "must be one of reliable, best_effort"),
    ({"debug_image.max_rate_hz": 0.0}, "debug_image.max_rate_hz must be > 0.0"),
    ({"frames.max_future_s": -0.5}, "frames.max_future_s must be >= 0.0"),
    ({"frames.max_future_s": float("nan")}, "frames.max_future_s must be a finite number"),
    ({"frames.max_age_s": float("inf")}, "frames.max_age_s must be a finite number"),
    ({"model.name": ""}, "model.name must not be empty"),
    ({"autostart": 1}, "autostart must be bool, got int"),
    ({"tracking.mode": "flow"}, "tracking.mode must be one of box, memory"),
    ({"tracking.max_rate_hz": 0}, "tracking.max_rate_hz must be > 0.0"),
    ({"tracking.min_score": 1.5}, "tracking.min_score must be <= 1.0"),
    ({"tracking.min_area_ratio": -0.1}, "tracking.min_area_ratio must be >= 0.0"),
    ({"tracking.max_area_ratio": 0.5}, "tracking.max_area_ratio must be >= 1.0"),
    ({"tracking.reacquire_period_s": -1.0}, "tracking.reacquire_period_s must be >= 0.0"),
    ({"tracking.enabled": "yes"}, "tracking.enabled must be bool, got str"),
])
def test_bad_parameters_are_rejected_by_name(values, message):
    with pytest.raises(ParameterError) as info:
        LensParams.from_ros(values)
    assert message in str(info.value)


def test_integers_are_accepted_for_float_parameters():
    assert LensParams.from_ros({"frames.max_age_s": 2}).max_frame_age_s == 2.0


@pytest.mark.parametrize("text, message", [
    ("lens_node: [1, 2]\n", "section 'lens_node' of"),
    ("- a\n- b\n", "must hold a mapping"),
    ("/**: {ros__parameters: {a: [}\n", "cannot read parameters file"),
])
def test_malformed_parameter_files_are_reported(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ParameterError) as info:
        read_params_file(path)
    assert message in str(info.value)


@pytest.mark.parametrize("name, resolved", [
    ("mask", "/lens/mask"),
    ("/camera/image_raw", "/camera/image_raw"),
    ("~/debug", "/lens/lens_node/debug"),
    ("sub/topic", "/lens/sub/topic"),
])
def test_topic_names_resolve_like_rcl(name, resolved):
    assert resolve_topic(name, "/lens", "lens_node") == resolved


def test_root_namespace_and_dds_prefix():
    assert resolve_topic("query", "/", "n") == "/query"
    assert dds_topic_name(resolve_topic("query", "lens", "n")) == "rt/lens/query"


@pytest.mark.parametrize("name", ["9lives", "a//b", "a b", "mask/", "caf\u00e9"])
def test_invalid_topic_names_are_rejected(name):
    with pytest.raises(ParameterError, match="invalid"):
        resolve_topic(name, "/lens", "lens_node")


def test_ros_args_are_split_off_for_rclpy():
    own, ros = split_ros_args(["--transport", "ros", "--ros-args", "-r", "__ns:=/x", "--params-file", "p.yaml"])
    assert own == ["--transport", "ros"]
    assert ros == ["--ros-args", "-r", "__ns:=/x", "--params-file", "p.yaml"]


def test_lens_node_tracking_shortcut_sets_tracking_enabled_and_is_absent_by_default():
    assert overrides(build_parser().parse_args([])) == {}
    args = build_parser().parse_args(["--tracking"])
    assert overrides(args) == {"tracking.enabled": True}
    assert LensParams.from_ros(overrides(args)).tracking
    assert rcl_arguments(args, []) == ["--ros-args", "-p", "tracking.enabled:=True"]


def test_lens_node_exits_with_a_message_on_a_bad_parameter(tmp_path, caplog):
    path = tmp_path / "p.yaml"
    path.write_text("/**:\n  ros__parameters:\n    queries: {full_policy: sometimes}\n")
    assert lens_node_main(["--transport", "dds", "--params-file", str(path)]) == 2
    assert "queries.full_policy must be one of drop_oldest, reject_new" in caplog.text


def test_lens_node_ros_transport_without_rclpy_says_what_to_do(caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "rclpy", None)  # as on a machine without ROS 2
    monkeypatch.delitem(sys.modules, "lens_ros.transports.rclpy_node", raising=False)
    assert lens_node_main(["--transport", "ros"]) == 2
    assert "source your ROS 2 setup.bash, or use --transport dds" in caplog.text
