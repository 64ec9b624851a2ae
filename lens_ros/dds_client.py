"""Talk to a running lens_node over CycloneDDS, without ROS: send a frame and a query, get the result.

    python -m lens_ros.dds_client --image scene.png --query "the red cup" [--save-mask mask.png]

Prints the JSON result. Uses the same topic names and ROS 2 wire format as the node, so it works
with ``lens_node --transport dds`` and with the rclpy node on rmw_cyclonedds alike.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cyclonedds.core import ReadCondition, WaitSet
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from lens_model.errors import InputError
from lens_model.image_io import read_image_file
from lens_model.staged_outputs import write_durably
from lens_ros.core import messages
from lens_ros.core.frames import Stamp
from lens_ros.core.image_codec import encode_image
from lens_ros.core.names import dds_topic_name, resolve_topic
from lens_ros.core.params import LensParams
from lens_ros.msgs import idl
from lens_ros.transports.dds import ANY_SAMPLE, domain_id_from_env, ros_qos

KIT = idl.dds_kit()


class LensDdsClient:
    """Publishers for frames, queries and track stops, and a background thread collecting every output
    (the track outputs too, which a node publishes with tracking.enabled)."""

    def __init__(self, params: LensParams | None = None, namespace: str = "/lens", domain_id: int | None = None):
        p = params or LensParams()
        self.participant = DomainParticipant(domain_id_from_env() if domain_id is None else domain_id)
        reliable = ros_qos("reliable", 10)

        def topic(name: str, msg_type: type) -> Topic:
            return Topic(self.participant, dds_topic_name(resolve_topic(name, namespace, "lens_node")), msg_type)

        self.image_writer = DataWriter(self.participant, topic(p.image_topic, idl.Image), qos=reliable)
        self.compressed_writer = DataWriter(
            self.participant, topic(p.compressed_image_topic, idl.CompressedImage), qos=reliable) \
            if p.compressed_image_topic else None
        # As deep as the node's query reader and result writer, so that a burst is not overwritten here either.
        self.query_writer = DataWriter(self.participant, topic(p.query_topic, idl.String),
                                       qos=ros_qos("reliable", p.query_depth))
        self.stop_writer = DataWriter(self.participant, topic(p.track_stop_topic, idl.String),
                                      qos=ros_qos("reliable", 1))
        inputs = {  # name: (topic, type, history depth)
            "mask": (p.mask_topic, idl.Image, p.output_depth),
            "instances": (p.instances_topic, idl.Image, p.output_depth),
            "detections": (p.detections_topic, idl.Detection2DArray, p.output_depth),
            "reasoning": (p.reasoning_topic, idl.String, p.output_depth),
            "result": (p.result_topic, idl.String, p.result_depth),
            "diagnostics": (p.diagnostics_topic, idl.DiagnosticArray, p.output_depth),
            "track_mask": (p.track_mask_topic, idl.Image, p.output_depth),
            "track_instances": (p.track_instances_topic, idl.Image, p.output_depth),
            "track_detections": (p.track_detections_topic, idl.Detection2DArray, p.output_depth),
            "track_status": (p.track_status_topic, idl.String, p.output_depth),
        }
        # KEEP_LAST, not KEEP_ALL: a reader of a closed client that refused samples would stall delivery to
        # the other readers in this process.
        self._readers = {name: DataReader(self.participant, topic(topic_name, msg_type), qos=ros_qos("reliable", depth))
                         for name, (topic_name, msg_type, depth) in inputs.items()}
        self._depths = {name: depth for name, (_, _, depth) in inputs.items()}
        self._received: dict[str, list[Any]] = {name: [] for name in self._readers}
        self._arrived = threading.Condition(threading.RLock())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="lens-dds-client", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        waitset = WaitSet(self.participant)
        for reader in self._readers.values():
            waitset.attach(ReadCondition(reader, ANY_SAMPLE))
        while not self._stop.is_set():
            waitset.wait(duration(milliseconds=100))
            for name, reader in self._readers.items():
                samples = reader.take(N=self._depths[name])  # all it can hold
                if samples:
                    with self._arrived:
                        self._received[name].extend(samples)
                        self._arrived.notify_all()

    def _wait_for_data(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        with self._arrived:
            return self._arrived.wait_for(predicate, timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def received(self, output: str) -> list[Any]:
        with self._arrived:
            return list(self._received[output])

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(sample.data) for sample in self.received("result")]

    def track_statuses(self) -> list[dict[str, Any]]:
        return [json.loads(sample.data) for sample in self.received("track_status")]

    def stop_tracking(self) -> None:
        """Ask the node to stop its track; it answers with a ``stopped`` track status if one was running."""
        self.stop_writer.write(idl.String(data="stop"))

    def node_is_listening(self) -> bool:
        """True once the node's image and query subscriptions and result publisher are matched."""
        writers_matched = all(w.get_publication_matched_status().current_count >= 1
                              for w in (self.image_writer, self.query_writer))
        return writers_matched and self._readers["result"].get_subscription_matched_status().current_count >= 1

    def wait_for_node(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.node_is_listening():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def image_msg(self, rgb: np.ndarray, stamp: Stamp | None = None, frame_id: str = "camera") -> Any:
        stamp = stamp or Stamp.from_seconds(time.time())
        return messages.image(KIT, messages.header(KIT, stamp, frame_id), encode_image(rgb, "rgb8"))

    def send_image(self, rgb: np.ndarray, stamp: Stamp | None = None, frame_id: str = "camera",
                   ack_timeout_s: float = 5.0) -> Stamp:
        """Publish a frame. If the node subscribes reliably, wait until it has the whole frame, so that a
        query sent next cannot overtake a large frame's retransmitted fragments."""
        msg = self.image_msg(rgb, stamp, frame_id)
        self.image_writer.write(msg)
        self.image_writer.wait_for_acks(duration(seconds=ack_timeout_s))
        return Stamp.of(msg.header.stamp)

    def ask(self, text: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Send a query and return the next result (the node answers queries in order)."""
        before = len(self.received("result"))
        self.query_writer.write(idl.String(data=text))
        return self.next_result(before, timeout_s)

    def next_result(self, count_before: int, timeout_s: float) -> dict[str, Any]:
        if not self._wait_for_data(lambda: len(self.received("result")) > count_before, timeout_s):
            raise TimeoutError(f"no result within {timeout_s} s")
        return self.results()[count_before]

    def mask_for(self, result: dict[str, Any], timeout_s: float = 5.0) -> np.ndarray | None:
        """The mono8 mask published for ``result`` (matched by frame stamp), or None if there is none."""
        stamp = result.get("stamp")
        if stamp is None:
            return None

        def matching() -> list[Any]:
            return [m for m in self.received("mask")
                    if (m.header.stamp.sec, m.header.stamp.nanosec) == (stamp["sec"], stamp["nanosec"])]

        if not self._wait_for_data(lambda: bool(matching()), timeout_s):
            return None
        mask = matching()[-1]
        return np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.width)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lens-dds-client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="image file to publish as the camera frame")
    parser.add_argument("--query", required=True)
    parser.add_argument("--namespace", default="/lens")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the node and the result")
    parser.add_argument("--save-mask", help="write the returned mask to this PNG")
    args = parser.parse_args(argv)
    try:
        rgb = read_image_file(args.image, apply_exif_orientation=False)  # a camera frame keeps its pixel grid
    except InputError as exc:
        print(f"lens-dds-client: error: {exc}", file=sys.stderr)
        return 2
    client = LensDdsClient(namespace=args.namespace)
    try:
        if not client.wait_for_node(args.timeout):
            print("no lens_node found (check ROS_DOMAIN_ID and CYCLONEDDS_URI)", file=sys.stderr)
            return 2
        client.send_image(rgb)
        result = client.ask(args.query, args.timeout)
        print(json.dumps(result, indent=2, ensure_ascii=False))
        mask = client.mask_for(result) if args.save_mask else None
        if mask is not None:
            ok, png = cv2.imencode(".png", mask)
            if not ok:
                raise OSError("could not encode the mask as PNG")
            write_durably(Path(args.save_mask), png.tobytes())  # no OpenCV path I/O: any file name works
        return 1 if result["status"] == "error" else 0
    except (TimeoutError, OSError) as exc:
        print(f"lens-dds-client: error: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
