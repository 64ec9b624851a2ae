"""Query -> result latency and the share of camera frames the node receives, over real rclpy (Fast DDS,
ROS 2 Jazzy's default middleware) against the DDS transport (CycloneDDS), at 640x480 and 1920x1080.

    python -m benchmarks.ros_transports [--frames 20] [--rate 10] [--queries 5]

Needs the ROS test environment (make test-env). For each transport and each image QoS of the node it
starts ``lens_node`` with tiny-random as a process on this host, publishes --frames rgb8 frames at
--rate Hz from a camera publisher of the same middleware (reliable, as ROS 2 camera drivers publish
by default, or best effort), and reads how many the node received from its diagnostics; then it
times --queries queries on the newest frame. A best-effort camera and a reliable node do not match
(the node gets nothing), so that pair is not run. CycloneDDS runs with LOOPBACK_CYCLONEDDS_URI (a
16 MB socket buffer request); Fast DDS with its defaults.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from cyclonedds.pub import DataWriter
from cyclonedds.topic import Topic

from lens_ros.core.frames import Stamp
from lens_ros.core.names import dds_topic_name
from lens_ros.dds_client import LensDdsClient
from lens_ros.msgs import idl
from lens_ros.transports.dds import LOOPBACK_CYCLONEDDS_URI, ros_qos

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from rclpy_fixtures import Peer, interrupt, ros_environment, start_node  # noqa: E402

from lens_ros.core import messages  # noqa: E402
from lens_ros.core.image_codec import encode_image  # noqa: E402
from lens_ros.transports.rclpy_node import qos_profile  # noqa: E402

SIZES = ((640, 480), (1920, 1080))
CAMERA_DEPTH = {"reliable": 10, "best_effort": 5}  # rclcpp's SystemDefaultsQoS-style 10, SensorDataQoS 5
IMAGE_TOPIC = "/camera/image_raw"


class RclpySide:
    name = "rclpy (Fast DDS)"
    node_args: list[str] = []

    def __init__(self, cameras: list[str]) -> None:
        self.peer = Peer()
        self.cameras = {r: self.peer.node.create_publisher(self.peer.kit.Image, IMAGE_TOPIC,
                                                            qos_profile(r, CAMERA_DEPTH[r])) for r in cameras}

    def listening(self) -> bool:
        return self.peer.node_is_listening()

    def publish(self, reliability: str, pixels: np.ndarray) -> None:
        kit = self.peer.kit
        hdr = messages.header(kit, Stamp.from_seconds(time.time()), "camera")
        self.cameras[reliability].publish(messages.image(kit, hdr, encode_image(pixels, "rgb8")))
        self.peer.executor.spin_once(timeout_sec=0)

    def pause(self, seconds: float) -> None:
        self.peer.linger(seconds)

    def frames_received(self) -> int:
        return int({kv.key: kv.value for kv in self.peer.fresh_diagnostics().values}["frames_received"])

    def ask(self, text: str) -> dict[str, Any]:
        return self.peer.ask(text, 120)

    def close(self) -> None:
        self.peer.close()


class DdsSide:
    name = "dds transport (CycloneDDS)"
    node_args = ["--transport", "dds"]

    def __init__(self, cameras: list[str]) -> None:
        self.client = LensDdsClient()
        topic = Topic(self.client.participant, dds_topic_name(IMAGE_TOPIC), idl.Image)
        self.cameras = {r: DataWriter(self.client.participant, topic, qos=ros_qos(r, CAMERA_DEPTH[r]))
                        for r in cameras}

    def listening(self) -> bool:
        return self.client.node_is_listening()

    def publish(self, reliability: str, pixels: np.ndarray) -> None:
        self.cameras[reliability].write(self.client.image_msg(pixels))

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    def frames_received(self) -> int:
        seen = len(self.client.received("diagnostics"))
        deadline = time.monotonic() + 10
        while len(self.client.received("diagnostics")) < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        newest = self.client.received("diagnostics")[-1].status[0]
        return int({kv.key: kv.value for kv in newest.values}["frames_received"])

    def ask(self, text: str) -> dict[str, Any]:
        return self.client.ask(text, 120)

    def close(self) -> None:
        self.client.close()


def run_case(side: Any, camera: str, size: tuple[int, int], args: argparse.Namespace,
             ) -> tuple[int, list[float], list[float]]:
    """Frames the node received out of args.frames; the query -> result times (ms) of answered queries,
    and the same minus the node's own work on them (decode and model: the result's node_total)."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    before = side.frames_received()
    for _ in range(args.frames):
        side.publish(camera, pixels)
        side.pause(1.0 / args.rate)
    side.pause(1.0)  # retransmissions settle
    received = side.frames_received() - before
    times, transport = [], []
    for i in range(args.queries):
        start = time.perf_counter()
        result = side.ask(f"the object number {i}")
        if result["status"] != "error":
            times.append((time.perf_counter() - start) * 1000.0)
            transport.append(times[-1] - result["timings_ms"]["node_total"])
    return received, times, transport


def run_transport(side_class: type, node_reliability: str, args: argparse.Namespace, workdir: Path) -> list[str]:
    params = workdir / f"{side_class.__name__}-{node_reliability}.yaml"
    node_params = {"model": {"name": "tiny-random", "max_new_tokens": args.max_new_tokens},
                   "frames": {"max_age_s": 0.0}, "diagnostics": {"period_s": 0.3},
                   "qos": {"image_reliability": node_reliability}}
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": node_params}}))
    node = start_node([*side_class.node_args, "--params-file", str(params)], params.with_suffix(".log"))
    # a best-effort camera does not match a reliable node: not run
    cameras = ["reliable", "best_effort"] if node_reliability == "best_effort" else ["reliable"]
    side = side_class(cameras)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while not side.listening():
            if node.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"node did not come up:\n{node.log_path.read_text()[-2000:]}")
            side.pause(0.05)
        side.ask("warm-up")
        for size in SIZES:
            for camera in cameras:
                received, times, transport = run_case(side, camera, size, args)
                latency = (f"{statistics.median(times):7.1f} ms (max {max(times):6.1f}), "
                           f"{statistics.median(transport):5.1f} ms" if times else "no frame: every query failed")
                lines.append(f"{side.name:27s} {node_reliability:12s} {camera:12s} {size[0]:4d}x{size[1]:<5d} "
                             f"{received:3d}/{args.frames:<3d} ({100 * received / args.frames:3.0f}%)   {latency}")
    finally:
        side.close()
        interrupt(node)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20, help="frames per case")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate, Hz")
    parser.add_argument("--queries", type=int, default=5, help="timed queries per case")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("CYCLONEDDS_URI", LOOPBACK_CYCLONEDDS_URI)
    print(f"{args.frames} rgb8 frames at {args.rate:g} Hz per case, tiny-random (max_new_tokens "
          f"{args.max_new_tokens}), CPU, node and publishers on this host")
    print(f"{'transport':27s} {'node image':12s} {'camera':12s} {'frame':10s} {'frames received':18s} "
          f"query -> result, median (max); of it outside the node's decode + model, median")
    with ros_environment(), tempfile.TemporaryDirectory() as workdir:
        for side_class in (RclpySide, DdsSide):
            for node_reliability in ("best_effort", "reliable"):
                for line in run_transport(side_class, node_reliability, args, Path(workdir)):
                    print(line, flush=True)


if __name__ == "__main__":
    main()
