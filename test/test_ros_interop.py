"""The two transports talk to each other's middleware on loopback: the DDS transport (CycloneDDS)
serves a real rclpy peer (Fast DDS), and the rclpy node (Fast DDS) serves the CycloneDDS client."""
from __future__ import annotations

import os

import pytest
from rclpy_fixtures import Peer, interrupt, kill_if_running, node_log, ros_environment, start_node, wait_for_node
from ros_fixtures import pattern_image

from lens_ros.dds_client import LensDdsClient
from lens_ros.transports.dds import LOOPBACK_CYCLONEDDS_URI

PARAMS = """\
/**:
  ros__parameters:
    model: {name: tiny-random, max_new_tokens: 8}
    frames: {max_age_s: 0.0}
    diagnostics: {period_s: 0.3}
"""


@pytest.fixture
def loopback(monkeypatch):
    monkeypatch.setenv("CYCLONEDDS_URI", LOOPBACK_CYCLONEDDS_URI)
    with ros_environment():
        yield


def test_the_dds_transport_serves_an_rclpy_peer_on_fast_dds(loopback, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    process = start_node(["--transport", "dds", "--params-file", str(params)], tmp_path / "node.log")
    peer = Peer()
    try:
        wait_for_node(peer, process)
        stamp = peer.send_image(pattern_image(48, 64))  # confirmed through the node's diagnostics
        result = peer.ask("the red circle")
        assert result["status"] in ("ok", "no_target", "no_box"), f"{result}\n{node_log(process)}"
        assert result["stamp"] == {"sec": stamp.sec, "nanosec": stamp.nanosec}
        assert peer.spin_until(lambda: all(peer.received[name] for name in ("mask", "detections", "reasoning")), 5)
        mask, detections = peer.received["mask"][-1], peer.received["detections"][-1]
        assert (mask.encoding, mask.height, mask.width) == ("mono8", 48, 64)
        for header in (mask.header, detections.header):
            assert (header.stamp.sec, header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
        assert interrupt(process)[0] == 0, node_log(process)
    finally:
        peer.close()
        kill_if_running(process)


def test_the_rclpy_node_on_fast_dds_serves_the_cyclonedds_client(loopback, tmp_path):
    process = start_node(["--ros-args", "-p", "model.name:=fake", "-p", "frames.max_age_s:=0.0"],
                         tmp_path / "node.log", fake=True)
    client = LensDdsClient(domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    try:
        assert client.wait_for_node(60), node_log(process)
        for _ in range(10):  # a sample written while the node's reader is still matching can be skipped
            client.send_image(pattern_image(48, 64))
            result = client.ask("the thing", 30)
            if result["status"] != "error":
                break
        assert result["status"] == "ok" and result["box"] == [0.0, 0.0, 32.0, 24.0], (result, node_log(process))
        mask = client.mask_for(result)
        assert mask is not None and mask.shape == (48, 64)
        assert interrupt(process)[0] == 0, node_log(process)
    finally:
        client.close()
        kill_if_running(process)
