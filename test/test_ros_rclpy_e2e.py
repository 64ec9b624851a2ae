"""End to end on real rclpy (ROS 2 Jazzy wheels, Fast DDS): ``python -m lens_ros.lens_node`` with the
tiny-random model runs as its own process with lifecycle autostart; this test is a real rclpy peer.

The tests run in file order against one node process, the last one stopping it.
"""
from __future__ import annotations

import numpy as np
import pytest
from rclpy_fixtures import (
    STOP_TIMEOUT_S, Peer, interrupt, kill_if_running, node_log, ros_environment, start_node, wait_for_node)
from ros_fixtures import pattern_image

from lens_ros.core.service import ECHOED_QUERY_CHARS

# The file says queries.max_length 50, the command line 100: the command line must win.
PARAMS = """\
/**:
  ros__parameters:
    model: {name: tiny-random, max_new_tokens: 8}
    frames: {max_age_s: 5.0}
    queries: {max_length: 50}
    diagnostics: {period_s: 0.3}
"""
MAX_LENGTH = 100


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lens_rclpy")
    params = workdir / "params.yaml"
    params.write_text(PARAMS)
    with ros_environment():
        process = start_node(["--params-file", str(params), "--ros-args", "-p", f"queries.max_length:={MAX_LENGTH}"],
                             workdir / "node.log")
        peer = Peer()
        try:
            wait_for_node(peer, process)
            yield process, peer
        finally:
            peer.close()
            kill_if_running(process)


def test_user_parameters_win_over_the_params_file(node):
    _, peer = node
    assert peer.get_parameter("queries.max_length") == MAX_LENGTH
    assert peer.get_parameter("model.max_new_tokens") == 8  # and the file still applies


def test_a_query_gets_each_output_once_stamped_with_its_frame(node):
    process, peer = node
    stamp = peer.send_image(pattern_image(48, 64))
    before = {name: len(peer.received[name]) for name in ("mask", "detections", "reasoning")}
    result = peer.ask("the red circle " * 5)  # 75 characters: over the file's limit, within the command line's
    assert result["status"] in ("ok", "no_target", "no_box"), f"{result}\n{node_log(process)}"
    assert result["stamp"] == {"sec": stamp.sec, "nanosec": stamp.nanosec} and result["frame_id"] == "camera_optical"
    assert peer.spin_until(lambda: all(len(peer.received[n]) > before[n] for n in before), 5), node_log(process)
    peer.linger(0.5)
    mask, = peer.received["mask"][before["mask"]:]
    detections, = peer.received["detections"][before["detections"]:]
    reasoning, = peer.received["reasoning"][before["reasoning"]:]
    assert [r["query_id"] for r in peer.results()].count(result["query_id"]) == 1
    for header in (mask.header, detections.header, *(d.header for d in detections.detections)):
        assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (stamp.sec, stamp.nanosec,
                                                                            "camera_optical")
    pixels = np.asarray(mask.data, dtype=np.uint8)
    assert (mask.encoding, mask.height, mask.width, mask.step) == ("mono8", 48, 64, 64)
    assert pixels.size == 48 * 64 and set(np.unique(pixels)) <= {0, 255}
    assert len(detections.detections) == (1 if result["status"] == "ok" else 0)
    if result["status"] == "ok":
        detection = detections.detections[0]
        x1, y1, x2, y2 = result["box"]
        assert detection.id == str(result["query_id"])
        assert detection.bbox.center.position.x == pytest.approx((x1 + x2) / 2)
        assert detection.bbox.size_x == pytest.approx(x2 - x1)
        assert detection.results[0].hypothesis.score == pytest.approx(result["score"])
    assert reasoning.data == result["reasoning"]


def test_empty_and_oversized_queries_each_get_one_short_error_result(node):
    _, peer = node
    before = {name: len(peer.received[name]) for name in ("mask", "detections", "reasoning")}
    empty = peer.ask("")
    huge = peer.ask("x" * 100_000)
    peer.linger(0.5)
    assert empty["status"] == "error" and empty["error"] == "query is empty"
    assert huge["status"] == "error" and "query is 100000 characters long; the limit is 100" in huge["error"]
    assert huge["query"] == "x" * ECHOED_QUERY_CHARS + "..." and f"first {ECHOED_QUERY_CHARS}" in huge["error"]
    assert {name: len(peer.received[name]) for name in before} == before  # errors publish only the result
    ids = [r["query_id"] for r in peer.results()]
    assert len(ids) == len(set(ids))


def test_diagnostics_while_active(node):
    _, peer = node
    status = peer.fresh_diagnostics()
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == "lens_node: segmentation" and status.hardware_id == "cpu"  # as the DDS transport names it
    assert status.level == b"\x01" and "random weights" in status.message
    assert values["state"] == "active" and values["model"] == "tiny-random"
    assert int(values["queries_received"]) >= 3 and int(values["frames_received"]) >= 1


def test_deactivate_frees_the_model_and_configure_activate_reloads_it(node):
    process, peer = node
    last_id = peer.results()[-1]["query_id"]
    assert peer.transition("deactivate") and peer.state() == "inactive"
    status = peer.fresh_diagnostics()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b"\x02" and status.message == "inactive: no model loaded"
    assert values["state"] == "inactive" and values["model"] == ""
    assert peer.transition("cleanup") and peer.state() == "unconfigured"
    status = peer.fresh_diagnostics()
    assert status.level == b"\x02" and status.message == "unconfigured: no model loaded"
    assert peer.transition("configure") and peer.transition("activate") and peer.state() == "active"
    peer.send_image(pattern_image(48, 64))
    result = peer.ask("the red circle")
    assert result["status"] in ("ok", "no_target", "no_box"), f"{result}\n{node_log(process)}"
    assert result["query_id"] == last_id + 1  # one sequence per node run, across cleanup and configure


def test_a_failed_activate_is_reported_in_the_diagnostics(node):
    _, peer = node
    assert peer.transition("deactivate") and peer.transition("cleanup")
    peer.set_parameter("model.name", "/nonexistent/lens-model")
    assert peer.transition("configure")
    assert not peer.transition("activate") and peer.state() == "inactive"
    status = peer.fresh_diagnostics()
    assert status.level == b"\x02"
    assert status.message.startswith("inactive: no model loaded; activate failed: cannot load model "
                                      "/nonexistent/lens-model: ")
    # not active: no query subscription, so a client can see that nobody takes its queries
    assert peer.spin_until(lambda: peer.query_pub.get_subscription_count() == 0, 5)
    peer.set_parameter("model.name", "tiny-random")
    assert peer.transition("cleanup") and peer.transition("configure") and peer.transition("activate")
    assert peer.fresh_diagnostics().values[0].value == "active"


def test_sigint_stops_the_node_with_exit_code_0(node):
    process, _ = node
    code, seconds = interrupt(process)
    assert code == 0, node_log(process)
    assert seconds < STOP_TIMEOUT_S, f"stopping an idle node took {seconds:.1f} s"
    assert "Traceback" not in node_log(process)
