"""Tracking on the rclpy lifecycle node in this process (Jazzy rclpy, Fast DDS) with FakeTracker and a
real peer node: the track topics stamped per frame, the ~/stop_tracking service and the track/stop topic."""
from __future__ import annotations

import json
from collections import defaultdict

from rclpy_fixtures import ros_import
from ros_fixtures import FakeSegmenter, marked, open_fake_tracker
from test_ros_rclpy import ros, spin_until  # noqa: F401 - the fixture
from test_ros_tracking import square_at

ros_import("std_srvs.srv")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from lens_ros.core import messages  # noqa: E402
from lens_ros.core.frames import Stamp  # noqa: E402
from lens_ros.core.image_codec import encode_image  # noqa: E402
from lens_ros.transports.rclpy_node import LensLifecycleNode, qos_profile, ros_kit  # noqa: E402

NS = "/lens_track"


def test_track_topics_stamped_per_frame_and_the_stop_service_and_topic(ros):  # noqa: F811
    segmenter = FakeSegmenter()
    node = LensLifecycleNode("lens_node", NS, load=lambda *_: segmenter, track=open_fake_tracker)
    node.set_parameters([Parameter("tracking.enabled", value=True), Parameter("frames.max_age_s", value=0.0)])
    peer = Node("lens_track_peer")
    kit = ros_kit()
    received: dict[str, list] = defaultdict(list)
    for topic, msg_type in (("result", kit.String), ("mask", kit.Image), ("track/mask", kit.Image),
                            ("track/instances", kit.Image), ("track/detections", kit.Detection2DArray),
                            ("track/status", kit.String)):
        peer.create_subscription(msg_type, f"{NS}/{topic}", received[topic].append, qos_profile("reliable", 100))
    image_pub = peer.create_publisher(kit.Image, "/camera/image_raw", qos_profile("reliable", 1))
    query_pub = peer.create_publisher(kit.String, f"{NS}/query", qos_profile("reliable", 10))
    stop_pub = peer.create_publisher(kit.String, f"{NS}/track/stop", qos_profile("reliable", 1))
    stop_client = peer.create_client(Trigger, f"{NS}/lens_node/stop_tracking")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(peer)
    stamps: dict[int, Stamp] = {}

    def send_frame(index: int) -> None:
        stamps[index] = Stamp.from_seconds(1_700_000_000 + index / 10)
        before = node._lens.frames.received  # noqa: SLF001
        hdr = messages.header(kit, stamps[index], f"f{index}")
        image_pub.publish(messages.image(kit, hdr, encode_image(marked(index), "rgb8")))
        assert spin_until(executor, lambda: node._lens.frames.received > before, 5)  # noqa: SLF001

    def statuses() -> list[dict]:
        return [json.loads(m.data) for m in received["track/status"]]

    def call_stop() -> Trigger.Response:
        assert spin_until(executor, stop_client.service_is_ready, 10)
        future = stop_client.call_async(Trigger.Request())
        assert spin_until(executor, future.done, 10)
        return future.result()

    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        for pub in (image_pub, query_pub, stop_pub):
            assert spin_until(executor, lambda: pub.get_subscription_count() >= 1, 10)
        send_frame(0)
        query_pub.publish(kit.String(data="the thing"))
        assert spin_until(executor, lambda: segmenter.fake_tracker.started_on == [0], 10)
        for index in (1, 2):
            send_frame(index)
            assert spin_until(executor, lambda: len(received["track/status"]) == index, 10)
        assert spin_until(executor, lambda: len(received["track/detections"]) == len(received["track/instances"]) == 2,
                          5)
        for index, mask, instances, detections in zip((1, 2), received["track/mask"], received["track/instances"],
                                                      received["track/detections"], strict=True):
            assert set(instances.data) == {0, 1} and instances.encoding == "mono8"
            for header in (mask.header, instances.header, detections.header, detections.detections[0].header):
                assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (
                    stamps[index].sec, stamps[index].nanosec, f"f{index}")
            assert square_at(mask) == index and detections.detections[0].id == "1/1"
        assert [(s["status"], s["frame_id"]) for s in statuses()] == [("tracking", "f1"), ("tracking", "f2")]
        assert len(received["mask"]) == len(received["result"]) == 1  # the query's own outputs, once

        response = call_stop()
        assert (response.success, response.message) == (True, "stopped the track of query 1")
        assert spin_until(executor, lambda: len(statuses()) == 3, 5)
        assert statuses()[2]["status"] == "stopped"
        assert statuses()[2]["reason"] == f"stop requested through {NS}/lens_node/stop_tracking"
        assert (call_stop().success, call_stop().message) == (True, "no track was running")

        query_pub.publish(kit.String(data="the thing"))  # a new query starts a new track; the topic stops it
        assert spin_until(executor, lambda: segmenter.fake_tracker.started_on == [0, 2], 10)
        stop_pub.publish(kit.String(data="stop"))
        assert spin_until(executor, lambda: len(statuses()) == 4, 5)
        assert (statuses()[3]["status"], statuses()[3]["query_id"]) == ("stopped", 2)
        assert statuses()[3]["reason"] == f"stop requested on {NS}/track/stop"
        send_frame(3)
        executor.spin_once(timeout_sec=0.3)
        assert segmenter.fake_tracker.stepped == [1, 2] and len(received["track/mask"]) == 2

        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert spin_until(executor, lambda: not stop_client.service_is_ready(), 5)  # the service goes with it
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()
