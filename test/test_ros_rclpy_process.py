"""lens_node's rclpy transport as a process, with stand-in models (test/rclpy_node_main.py): stopping
on signals, a burst of queries, diagnostics before configure, and a ROS install without vision_msgs."""
from __future__ import annotations

import signal
import time

import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy_fixtures import (
    STOP_TIMEOUT_S, Peer, interrupt, kill_if_running, node_log, ros_environment, start_node, wait_for_node)
from ros_fixtures import pattern_image

from lens_ros.core import messages
from lens_ros.core.frames import Stamp
from lens_ros.core.image_codec import encode_image
from lens_ros.core.service import RESULT_FLUSH_S, SHUTDOWN_GRACE_S
from lens_ros.transports.rclpy_node import qos_profile

FAKE = ["--ros-args", "-p", "model.name:=fake", "-p", "frames.max_age_s:=0.0", "-p", "diagnostics.period_s:=0.3"]


@pytest.fixture
def peer():
    with ros_environment():
        peer = Peer()
        yield peer
        peer.close()


@pytest.fixture
def run_node(tmp_path):
    """Start a node process: run_node(*args, hide_vision_msgs=False); killed at the end if still running."""
    processes = []

    def run(*args: str, hide_vision_msgs: bool = False):
        env = {"LENS_TEST_HIDE_VISION_MSGS": "1"} if hide_vision_msgs else {}
        process = start_node(list(args), tmp_path / f"node{len(processes)}.log", fake=True, env=env)
        processes.append(process)
        return process

    with ros_environment():
        yield run
    for process in processes:
        kill_if_running(process)


@pytest.mark.parametrize("signum", [signal.SIGINT] * 4 + [signal.SIGTERM])
def test_a_serving_node_stops_on_a_signal_with_exit_code_0(run_node, peer, signum):
    process = run_node(*FAKE)
    wait_for_node(peer, process)
    peer.send_image(pattern_image(48, 64))
    result = peer.ask("the thing")
    assert result["status"] == "ok", (result["error"], node_log(process))
    code, seconds = interrupt(process, signum)
    assert code == 0 and "Traceback" not in node_log(process), node_log(process)
    assert seconds < STOP_TIMEOUT_S, f"stopping an idle node took {seconds:.1f} s"


def test_stopping_answers_the_running_and_the_waiting_queries_within_the_grace_period(run_node, peer):
    process = run_node(*FAKE, "-p", "model.name:=fake-slow")
    wait_for_node(peer, process)
    peer.send_image(pattern_image(48, 64))
    for text in ("first", "second", "third"):
        peer.send_query(text)
    peer.linger(1.0)  # the worker has taken "first" (it runs for 30 s); the others wait
    assert peer.results() == [], node_log(process)
    code, seconds = interrupt(process)
    assert code == 0, node_log(process)
    assert seconds < SHUTDOWN_GRACE_S + RESULT_FLUSH_S + 2.0, f"stopping took {seconds:.1f} s"
    assert peer.spin_until(lambda: len(peer.results()) == 3, 5), (peer.results(), node_log(process))
    errors = {r["query"]: r["error"] for r in peer.results()}
    assert errors["first"] == f"node deactivated or shut down while this query ran (waited {SHUTDOWN_GRACE_S:g} s)"
    assert errors["second"] == errors["third"] == "node deactivated before this query ran"


def test_a_burst_of_200_queries_gets_200_results(run_node, peer):
    process = run_node(*FAKE)
    wait_for_node(peer, process)
    peer.send_image(pattern_image(48, 64))
    peer.linger(0.3)
    for index in range(200):
        peer.send_query(f"query {index}")
    assert peer.spin_until(lambda: len(peer.results()) >= 200, 60), (len(peer.results()), node_log(process))
    peer.linger(0.5)
    results = peer.results()
    assert sorted(r["query"] for r in results) == sorted(f"query {index}" for index in range(200))
    assert len({r["query_id"] for r in results}) == 200
    # the queue holds 4: the rest are answered at once, each with its own error result
    assert {r["status"] for r in results} <= {"ok", "error"}
    assert all("query queue full" in r["error"] for r in results if r["status"] == "error")


def test_diagnostics_report_an_unconfigured_node_and_why_configure_failed(run_node, peer):
    process = run_node(*FAKE, "-p", "autostart:=false", "-p", "queries.full_policy:=sometimes")
    status = peer.newest_diagnostics()
    assert status.level == b"\x02" and status.message == "unconfigured: no model loaded", node_log(process)
    assert status.name == "lens_node: segmentation"
    assert not peer.transition("configure") and peer.state() == "unconfigured"
    status = peer.fresh_diagnostics()
    assert status.level == b"\x02"
    assert status.message == ("unconfigured: no model loaded; configure failed: parameter queries.full_policy "
                              "must be one of drop_oldest, reject_new, got 'sometimes'")
    assert interrupt(process)[0] == 0, node_log(process)


def test_without_vision_msgs_the_node_warns_once_and_serves_everything_else(run_node, peer):
    process = run_node(*FAKE, hide_vision_msgs=True)
    wait_for_node(peer, process)
    peer.send_image(pattern_image(48, 64))
    result = peer.ask("the thing")
    assert result["status"] == "ok" and result["box"] == [0.0, 0.0, 32.0, 24.0], node_log(process)
    assert peer.spin_until(lambda: peer.received["mask"] and peer.received["reasoning"], 5)
    assert peer.node.count_publishers("/lens/detections") == 0 and peer.received["detections"] == []
    assert interrupt(process)[0] == 0
    log = node_log(process)
    assert log.count("vision_msgs is not installed: running without the detections output") == 1, log
    assert "Traceback" not in log


def camera_frames(peer: Peer, reliability: str, count: int, height: int, width: int) -> None:
    """Publish ``count`` frames at 5 Hz, as a camera driver of that reliability would."""
    camera = peer.node.create_publisher(peer.kit.Image, "/camera/image_raw", qos_profile(reliability, 10))
    if reliability == "reliable":  # (a best-effort writer never matches the node's reliable reader)
        # A volatile writer does not resend what it published before the node's reader matched it.
        assert peer.spin_until(lambda: camera.get_subscription_count() > 0, 10), "the node never subscribed"
    pixels = pattern_image(height, width)
    for _ in range(count):
        camera.publish(messages.image(peer.kit, messages.header(peer.kit, Stamp.from_seconds(time.time()), "cam"),
                                      encode_image(pixels, "rgb8")))
        peer.linger(0.2)


def test_with_the_default_image_qos_every_1080p_frame_of_a_reliable_camera_arrives(run_node, peer):
    process = run_node(*FAKE)
    wait_for_node(peer, process)
    camera_frames(peer, "reliable", 5, 1080, 1920)
    peer.linger(1.0)
    values = {kv.key: kv.value for kv in peer.fresh_diagnostics().values}
    assert values["frames_received"] == "5", node_log(process)


def test_a_best_effort_camera_gets_a_warning_that_names_the_parameter(run_node, peer):
    process = run_node(*FAKE)
    wait_for_node(peer, process)
    camera_frames(peer, "best_effort", 1, 48, 64)
    assert peer.spin_until(lambda: "set qos.image_reliability: best_effort" in node_log(process), 10), \
        node_log(process)
    assert interrupt(process)[0] == 0


def test_a_request_for_an_impossible_transition_does_not_stop_the_node(run_node, peer):
    process = run_node(*FAKE, "-p", "autostart:=false")
    peer.newest_diagnostics()
    request = ChangeState.Request()
    request.transition.id = Transition.TRANSITION_DEACTIVATE  # not possible while unconfigured
    peer._clients["change_state"].call_async(request)  # noqa: SLF001 - rclpy never answers it
    assert peer.spin_until(lambda: "dropped a request that failed" in node_log(process), 10), node_log(process)
    assert peer.transition("configure") and peer.transition("activate") and peer.state() == "active"
    assert interrupt(process)[0] == 0, node_log(process)
