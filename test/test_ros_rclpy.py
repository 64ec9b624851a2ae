"""The rclpy adapter and the launch file. They run where ROS 2 is sourced and skip cleanly elsewhere."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")
pytest.importorskip("diagnostic_msgs.msg")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_fixtures import FakeSegmenter, pattern_image  # noqa: E402

from lens_ros.core import messages  # noqa: E402
from lens_ros.core.frames import Stamp  # noqa: E402
from lens_ros.core.image_codec import encode_image, image_msg_to_rgb  # noqa: E402
from lens_ros.transports.rclpy_node import LensLifecycleNode, qos_profile, ros_kit  # noqa: E402

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "segment.launch.py"


@pytest.fixture
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def test_ros_kit_builds_every_output_message():
    kit = ros_kit()
    hdr = messages.header(kit, Stamp(1, 2), "cam")
    image = messages.image(kit, hdr, encode_image(pattern_image(6, 8), "rgb8"))
    np.testing.assert_array_equal(image_msg_to_rgb(image), pattern_image(6, 8))
    assert kit.Detection2DArray(header=hdr, detections=[]).header.frame_id == "cam"


def spin_until(executor, predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_lifecycle_node_answers_a_query_and_frees_the_model_on_deactivate(ros):
    segmenter = FakeSegmenter()
    node = LensLifecycleNode("lens_node", "/lens_test", load=lambda *_: segmenter)
    peer = Node("lens_test_peer")
    kit = ros_kit()
    results: list[dict] = []
    peer.create_subscription(kit.String, "/lens_test/result", lambda m: results.append(json.loads(m.data)),
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
        spin_until(executor, lambda: node._lens.frames.peek() is not None, 5)  # noqa: SLF001
        query_pub.publish(kit.String(data="the thing"))
        assert spin_until(executor, lambda: len(results) == 1, 10)
        assert results[0]["status"] == "ok" and results[0]["stamp"] == {"sec": stamp.sec, "nanosec": stamp.nanosec}
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert not node._lens.active  # noqa: SLF001
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()


def test_bad_parameter_fails_configure_without_crashing(ros):
    node = LensLifecycleNode("lens_node", "/lens_bad", load=lambda *_: FakeSegmenter())
    try:
        node.set_parameters([Parameter("queries.full_policy", value="sometimes")])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    finally:
        node.destroy_node()


def test_launch_file_declares_the_documented_arguments():
    pytest.importorskip("launch_ros")
    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {arg.name for arg in description.get_launch_arguments()}
    assert names == {"namespace", "image_topic", "params_file", "model", "device", "debug_image"}
