"""The rclpy adapter in this process, on real rclpy (ROS 2 Jazzy wheels, Fast DDS). Skips where the
ROS test environment is missing, fails under CI (rclpy_fixtures.ros_import)."""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
from rclpy_fixtures import DOMAIN_ID, ros_environment
from ros_fixtures import FakeSegmenter, pattern_image
from test_ros_msgs import build_all

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message, serialize_message

from lens_ros.core import messages
from lens_ros.core.frames import Stamp
from lens_ros.core.image_codec import encode_image, image_msg_to_rgb
from lens_ros.core.publishing import Output
from lens_ros.lens_node import build_parser, rcl_arguments
from lens_ros.msgs import idl
from lens_ros.transports.rclpy_node import LensLifecycleNode, qos_profile, ros_kit


@pytest.fixture
def ros():
    with ros_environment():
        rclpy.init(domain_id=DOMAIN_ID)
        yield
        rclpy.try_shutdown()


def test_ros_kit_builds_every_output_message():
    kit = ros_kit()
    hdr = messages.header(kit, Stamp(1, 2), "cam")
    image = messages.image(kit, hdr, encode_image(pattern_image(6, 8), "rgb8"))
    np.testing.assert_array_equal(image_msg_to_rgb(image), pattern_image(6, 8))
    assert kit.Detection2DArray(header=hdr, detections=[]).header.frame_id == "cam"


@pytest.mark.parametrize("ros_type", sorted(build_all(idl.dds_kit())))
def test_the_dds_transport_and_rclpy_read_each_others_cdr(ros_type):
    """The CycloneDDS types of the DDS transport against the real Jazzy message definitions. (Not byte
    for byte: Fast CDR leaves padding bytes uninitialised.)"""
    dds_msg, ros_msg = build_all(idl.dds_kit())[ros_type], build_all(ros_kit())[ros_type]
    assert type(dds_msg).deserialize(serialize_message(ros_msg)) == dds_msg
    assert deserialize_message(dds_msg.serialize(), type(ros_msg)) == ros_msg


def test_only_optional_message_packages_may_be_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "vision_msgs", None)
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", None)
    assert not ros_kit().has_detections
    monkeypatch.setitem(sys.modules, "sensor_msgs.msg", None)
    with pytest.raises(ModuleNotFoundError):
        ros_kit()


def spin_until(executor, predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_lifecycle_node_answers_a_query_and_frees_the_model_on_deactivate(ros):
    segmenter = FakeSegmenter("multi")
    node = LensLifecycleNode("lens_node", "/lens_test", load=lambda *_: segmenter)
    peer = Node("lens_test_peer")
    kit = ros_kit()
    results: list[dict] = []
    instances: list = []
    detections: list = []
    peer.create_subscription(kit.String, "/lens_test/result", lambda m: results.append(json.loads(m.data)),
                             qos_profile("reliable", 10))
    peer.create_subscription(kit.Image, "/lens_test/instances", instances.append, qos_profile("reliable", 10))
    peer.create_subscription(kit.Detection2DArray, "/lens_test/detections", detections.append,
                             qos_profile("reliable", 10))
    image_pub = peer.create_publisher(kit.Image, "/camera/image_raw", qos_profile("reliable", 1))
    query_pub = peer.create_publisher(kit.String, "/lens_test/query", qos_profile("reliable", 10))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(peer)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert spin_until(executor, lambda: query_pub.get_subscription_count() >= 1, 10)
        assert spin_until(executor, lambda: image_pub.get_subscription_count() >= 1, 10)
        stamp = Stamp.from_seconds(node.get_clock().now().nanoseconds * 1e-9)
        frame = encode_image(pattern_image(), "rgb8")
        image_pub.publish(messages.image(kit, messages.header(kit, stamp, "cam"), frame))
        assert spin_until(executor, lambda: node._lens.frames.peek() is not None, 5)  # noqa: SLF001
        query_pub.publish(kit.String(data="the thing"))
        assert spin_until(executor, lambda: len(results) == 1, 10)
        assert results[0]["status"] == "ok" and results[0]["stamp"] == {"sec": stamp.sec, "nanosec": stamp.nanosec}
        assert spin_until(executor, lambda: instances and detections, 5)
        (image,), (array,) = instances, detections
        assert (image.encoding, image.header.stamp.sec, image.header.stamp.nanosec) == ("mono8", stamp.sec, stamp.nanosec)
        assert sorted(set(image.data)) == [0, 1, 2] and [d.id for d in array.detections] == ["1/1", "1/2"]
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert not node._lens.active  # noqa: SLF001
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()


def test_query_ids_continue_across_cleanup_and_configure(ros):
    node = LensLifecycleNode("lens_node", "/lens_ids", load=lambda *_: FakeSegmenter())
    try:
        ids = []
        for _ in range(2):
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            node._lens.on_query("")  # noqa: SLF001 - answered at once, with its query id
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            ids.append(node._lens_ids.next())  # noqa: SLF001
        assert ids == [2, 4]
    finally:
        node.destroy_node()


def test_without_vision_msgs_configure_creates_no_detections_publisher(ros, monkeypatch):
    monkeypatch.setitem(sys.modules, "vision_msgs", None)
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", None)
    node = LensLifecycleNode("lens_node", "/lens_novision", load=lambda *_: FakeSegmenter())
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert Output.DETECTIONS not in node._lens_outputs and Output.MASK in node._lens_outputs  # noqa: SLF001
    finally:
        node.destroy_node()


def test_bad_parameter_fails_configure_without_crashing(ros):
    node = LensLifecycleNode("lens_node", "/lens_bad", load=lambda *_: FakeSegmenter())
    try:
        node.set_parameters([Parameter("queries.full_policy", value="sometimes")])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    finally:
        node.destroy_node()


def test_parameter_precedence_file_then_user_ros_args_then_shortcuts(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters:\n    queries: {max_length: 50, queue_size: 9}\n"
                      "    model: {device: cuda}\n")
    args = build_parser().parse_args(["--params-file", str(params), "--device", "cpu"])
    user = ["--ros-args", "-p", "queries.max_length:=100", "-p", "model.device:=cuda:1"]
    with ros_environment():
        rclpy.init(args=["lens_node", *rcl_arguments(args, user)], domain_id=DOMAIN_ID)
        try:
            node = LensLifecycleNode("lens_node", "/lens_args")
            values = {name: node.get_parameter(name).value
                      for name in ("queries.max_length", "queries.queue_size", "model.device")}
            node.destroy_node()
        finally:
            rclpy.try_shutdown()
    assert values == {"queries.max_length": 100, "queries.queue_size": 9, "model.device": "cpu"}


def test_diagnostics_publish_before_configure_and_follow_a_new_topic_at_configure(ros):
    node = LensLifecycleNode("lens_node", "/lens_diag", load=lambda *_: FakeSegmenter())
    try:
        assert node.count_publishers("/diagnostics") == 1  # unconfigured, and already reporting
        node.set_parameters([Parameter("topics.diagnostics", value="/lens_diag/status")])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert (node.count_publishers("/diagnostics"), node.count_publishers("/lens_diag/status")) == (0, 1)
    finally:
        node.destroy_node()
