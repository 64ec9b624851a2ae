"""End to end over real DDS on loopback: ``lens_node --transport dds`` with the tiny-random model runs as
a separate process; this test is a CycloneDDS peer speaking the ROS 2 wire format."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from ros_fixtures import FakeSegmenter, loopback_dds, pattern_image, unique_domain_id, wait_until

pytest.importorskip("lens_model.hub")

from cyclonedds._clayer import ddspy_write  # noqa: E402 - raw CDR, to send a non-UTF-8 string

from lens_ros.core import messages  # noqa: E402
from lens_ros.core.frames import Stamp  # noqa: E402
from lens_ros.core.params import LensParams  # noqa: E402
from lens_ros.core.service import RESULT_FLUSH_S, SHUTDOWN_GRACE_S  # noqa: E402
from lens_ros.dds_client import LensDdsClient  # noqa: E402
from lens_ros.dds_client import main as dds_client_main  # noqa: E402
from image_fixtures import png_claiming  # noqa: E402
from lens_ros.msgs import idl  # noqa: E402
from lens_ros.transports.dds import DdsNode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KIT = idl.dds_kit()
CLIENT_PARAMS = LensParams.from_ros({"topics.compressed_image": "/camera/image_raw/compressed"})
STARTUP_TIMEOUT_S = 90
RESULT_TIMEOUT_S = 30
PARAMS = """\
/**:
  ros__parameters:
    model: {name: tiny-random, max_new_tokens: 8}
    topics: {compressed_image: /camera/image_raw/compressed}
    frames: {max_age_s: 5.0}
    queries: {max_length: 100}
    diagnostics: {period_s: 0.5}
"""


class Peer(LensDdsClient):
    """The test's side of the wire, plus ways to send what a well-behaved client would not."""

    def send_image(self, pixels: np.ndarray, stamp: float | None = None, **broken) -> Stamp:
        """Publish an rgb8 frame; ``broken`` overrides message fields to make it inconsistent."""
        msg = self.image_msg(pixels, Stamp.from_seconds(time.time() if stamp is None else stamp), "camera_optical")
        for field, value in broken.items():
            setattr(msg, field, value)
        self.image_writer.write(msg)
        return Stamp.of(msg.header.stamp)

    def ask(self, text: str | bytes, timeout_s: float = RESULT_TIMEOUT_S) -> dict:
        if isinstance(text, str):
            return super().ask(text, timeout_s)
        before = len(self.received("result"))
        cdr = b"\x00\x01\x00\x00" + (len(text) + 1).to_bytes(4, "little") + text + b"\x00"
        assert ddspy_write(self.query_writer._ref, cdr.ljust((len(cdr) + 3) & ~3, b"\x00")) >= 0
        return self.next_result(before, timeout_s)


@pytest.fixture(scope="module")
def dds_domain():
    with loopback_dds(unique_domain_id()) as domain_id:
        yield domain_id


@pytest.fixture(scope="module")
def node(dds_domain, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lens_dds")
    params = workdir / "params.yaml"
    params.write_text(PARAMS)
    log_path = workdir / "node.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lens_ros.lens_node", "--transport", "dds", "--params-file", str(params)],
            cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    peer = Peer(CLIENT_PARAMS, domain_id=dds_domain)
    process.log_path = log_path
    try:
        ready = wait_until(lambda: peer.node_is_listening() or process.poll() is not None, STARTUP_TIMEOUT_S, 0.1)
        assert ready and process.poll() is None, f"node did not come up:\n{log_path.read_text()[-3000:]}"
        yield process, peer
    finally:
        peer.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)


def node_log(process) -> str:
    return process.log_path.read_text()[-3000:]


def test_query_before_any_frame_gets_an_error_result(node):
    process, peer = node
    result = peer.ask("the red circle")
    assert result["status"] == "error", node_log(process)
    assert result["error"] == "no image received yet on /camera/image_raw"


def test_image_and_query_produce_all_outputs_stamped_with_that_frame(node):
    process, peer = node
    stamp = peer.send_image(pattern_image(48, 64))
    result = peer.ask("the red circle")
    assert result["status"] in ("ok", "no_target", "no_box"), f"{result}\n{node_log(process)}"
    assert result["stamp"] == {"sec": stamp.sec, "nanosec": stamp.nanosec}
    assert result["frame_id"] == "camera_optical" and result["random_weights"] is True

    def stamped_with_frame(msg) -> bool:
        return (msg.header.stamp.sec, msg.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)

    assert wait_until(lambda: any(stamped_with_frame(m) for m in peer.received("mask")), 5)
    assert wait_until(lambda: any(stamped_with_frame(m) for m in peer.received("detections")), 5)
    assert wait_until(lambda: len(peer.received("reasoning")) >= 1, 5)
    mask = next(m for m in peer.received("mask") if stamped_with_frame(m))
    pixels = np.frombuffer(mask.data, np.uint8)
    assert (mask.encoding, mask.height, mask.width) == ("mono8", 48, 64) and set(np.unique(pixels)) <= {0, 255}
    assert peer.received("reasoning")[-1].data == result["reasoning"]
    detections = next(m for m in peer.received("detections") if stamped_with_frame(m))
    assert len(detections.detections) == (1 if result["status"] == "ok" else 0)


def test_bad_inputs_each_get_one_error_result_and_the_node_keeps_serving(node):
    process, peer = node
    first_id = len(peer.results())
    good = pattern_image(48, 64)
    cases = []

    def expect(message: str, text: str | bytes = "the red circle") -> None:
        cases.append((peer.ask(text), message))

    peer.send_image(good, encoding="yuv422")
    expect("unsupported image encoding 'yuv422'")
    peer.send_image(good, height=0, width=0, step=0, data=b"")
    expect("image is empty (0x0)")
    peer.send_image(good, data=bytes(100))
    expect("image data is truncated")
    peer.send_image(good, step=64)
    expect("image step 64 does not fit width 64")
    peer.compressed_writer.write(idl.CompressedImage(
        header=messages.header(KIT, Stamp.from_seconds(time.time()), "camera_optical"), format="jpeg",
        data=b"not a jpeg at all"))
    expect("cannot decode compressed image")
    peer.send_image(good, stamp=time.time() - 100.0)
    expect("s old")
    peer.send_image(good, stamp=time.time() + 10 * 365 * 86400.0)
    expect("s in the future")
    peer.send_image(good)
    expect("query is empty", "   ")
    expect("query is 500 characters long; the limit is 100", "x" * 500)
    expect("query is not valid UTF-8 (byte 0xff at offset 3)", b"caf\xff")

    for result, message in cases:
        assert result["status"] == "error" and message in result["error"], (message, result)
    stamp = peer.send_image(good)
    final = peer.ask("the red circle")
    assert final["status"] in ("ok", "no_target", "no_box"), f"{final}\n{node_log(process)}"
    assert final["stamp"] == {"sec": stamp.sec, "nanosec": stamp.nanosec}
    time.sleep(0.3)  # any duplicate result would arrive by now
    ids = [r["query_id"] for r in peer.results()[first_id:]]
    assert len(ids) == len(cases) + 1 == len(set(ids))
    assert process.poll() is None


def test_diagnostics_report_model_latency_and_frames(node):
    _, peer = node

    def newest_values() -> dict[str, str]:
        diagnostics = peer.received("diagnostics")
        return {kv.key: kv.value for kv in diagnostics[-1].status[0].values} if diagnostics else {}

    peer.send_image(pattern_image(48, 64))
    peer.ask("   ")  # answered at once, so the latency is set
    # published every 0.5 s: wait for one sent after this frame and query
    assert wait_until(lambda: newest_values().get("frame_age_s", "n/a") != "n/a"
                      and newest_values().get("last_latency_ms", "n/a") != "n/a", 5), newest_values()
    status = peer.received("diagnostics")[-1].status[0]
    values = newest_values()
    assert status.name == "lens_node: segmentation" and status.hardware_id == "cpu"
    assert status.level == 1 and "random weights" in status.message
    assert values["model"] == "tiny-random" and values["random_weights"] == "True"
    assert int(values["queries_received"]) >= 1 and int(values["frames_received"]) >= 1


def test_dds_client_command_line_prints_the_result_and_saves_the_mask(node, tmp_path, capsys):
    image, mask = tmp_path / "frame.png", tmp_path / "mask.png"
    cv2.imwrite(str(image), cv2.cvtColor(pattern_image(48, 64), cv2.COLOR_RGB2BGR))
    assert dds_client_main(["--image", str(image), "--query", "the red circle", "--save-mask", str(mask),
                            "--timeout", str(RESULT_TIMEOUT_S)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] in ("ok", "no_target", "no_box")
    saved = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    assert saved.shape == (48, 64) and set(np.unique(saved)) <= {0, 255}


def test_a_burst_of_200_queries_gets_200_results_and_the_client_sees_each_once(node):
    """Written back to back, far faster than the node answers: every query must reach the node, get
    exactly one result (most of them "query queue full"), and reach the client."""
    process, peer = node
    before = len(peer.results())
    sent = [f"burst query {i}" for i in range(200)]
    for text in sent:
        peer.query_writer.write(idl.String(data=text))
    wait_until(lambda: len(peer.results()) - before >= len(sent), RESULT_TIMEOUT_S, 0.1)
    time.sleep(0.3)  # any duplicate result would arrive by now
    burst = peer.results()[before:]
    assert len(burst) == len(sent), f"{len(burst)} of {len(sent)} results\n{node_log(process)}"
    assert sorted(r["query"] for r in burst) == sorted(sent)
    assert len({r["query_id"] for r in burst}) == len(sent)
    assert any("query queue full" in (r["error"] or "") for r in burst)


def test_node_stops_cleanly_on_sigint(node):
    process, _ = node
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0, node_log(process)


def test_dds_client_refuses_an_unusable_image_in_one_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(30_000, 30_000))
    for image in (tmp_path / "missing.png", bomb, tmp_path):
        assert dds_client_main(["--image", str(image), "--query", "the red circle", "--timeout", "1"]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lens-dds-client: error: "), lines


def test_a_query_running_at_shutdown_gets_its_result_within_the_grace_time(dds_domain):
    """Stopping the DDS transport waits SHUTDOWN_GRACE_S for a running query, not 30 s, and the
    query's error result still reaches the client."""
    gate = threading.Event()
    segmenter = FakeSegmenter(gate=gate)
    params = LensParams.from_ros({"frames.max_age_s": 0.0, "diagnostics.period_s": 60.0})
    dds_node = DdsNode(params, node_name="lens_shutdown", domain_id=dds_domain, load=lambda *_: segmenter)
    stop = threading.Event()
    thread = threading.Thread(target=dds_node.run, args=(stop,), daemon=True)
    thread.start()
    client = Peer(params, domain_id=dds_domain)
    try:
        assert wait_until(client.node_is_listening, STARTUP_TIMEOUT_S, 0.1)
        client.send_image(pattern_image())
        client.query_writer.write(idl.String(data="the slow one"))
        assert segmenter.started.wait(RESULT_TIMEOUT_S)
        started = time.monotonic()
        stop.set()
        thread.join(SHUTDOWN_GRACE_S + RESULT_FLUSH_S + 5.0)
        assert not thread.is_alive() and time.monotonic() - started < SHUTDOWN_GRACE_S + RESULT_FLUSH_S + 1.0
        assert wait_until(lambda: client.results(), 5.0, 0.05)
        (result,) = client.results()
        assert result["status"] == "error" and "while this query ran" in result["error"]
    finally:
        gate.set()
        client.close()
