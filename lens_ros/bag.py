"""``lens-bag``: replay a recorded camera stream through LENS and write every output topic to a new bag.

    lens-bag --input IN_BAG --image-topic /camera/image_raw --query "the red cup" --output OUT_BAG
    lens-bag --input IN_BAG --image-topic /camera/image_raw --query-topic /lens/query --output OUT_BAG
    lens-bag --input IN_BAG --image-topic /camera/image_raw --query "the red cup" --track --output OUT_BAG

With ``--query`` the text runs on every ``--stride``-th frame; with ``--query-topic`` each recorded
query runs on the newest frame at its time, as in the live node. With ``--track`` (tracking.enabled)
the target of a query is tracked on every later frame, and ``--query`` runs on the first frame only
unless ``--stride`` is given. No ROS install is needed (rosbags reads and writes rosbag2 sqlite3 and
MCAP). Queries and track steps run one after the other, nothing is dropped, and bag time is the clock
(for frame age, re-acquisition periods and diagnostics).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from tqdm import tqdm

from lens_model.errors import LensError
from lens_ros.core.names import resolve_topic
from lens_ros.core.outcome import ERROR, NO_BOX, NO_TARGET, OK
from lens_ros.core.params import LensParams, ParameterError, command_line_overrides, read_params_file
from lens_ros.core.outcome import LOST, TRACKING
from lens_ros.core.publishing import OUTPUT_TYPES, Output, output_topics
from lens_ros.core.segmenter import TrackerOpener, load_segmenter, open_tracker
from lens_ros.core.service import LensService, Loader
from lens_ros.msgs.rosbags_types import lens_typestore, rosbags_kit

log = logging.getLogger("lens_bag")

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}


class BagError(Exception):
    """A problem with the input or output bag that the user can fix."""


class BagClock:
    """Bag time: the log time of the message being replayed."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> float:
        return self.ns * 1e-9


@dataclass(frozen=True)
class OutputTopics:
    names: dict[Output, str]

    @classmethod
    def from_params(cls, params: LensParams, namespace: str, node_name: str) -> OutputTopics:
        return cls({out: resolve_topic(name, namespace, node_name) for out, name in output_topics(params).items()})


class BagSink:
    """Serialises each output message into the output bag at the current bag time."""

    def __init__(self, writer: Writer, typestore: Any, topics: OutputTopics, clock: BagClock) -> None:
        self._typestore = typestore
        self._clock = clock
        self._connections = {
            out: writer.add_connection(name, OUTPUT_TYPES[out], typestore=typestore)
            for out, name in topics.names.items()
        }
        self._writer = writer

    def __call__(self, output: Output, msg: Any) -> None:
        connection = self._connections[output]
        self._writer.write(connection, self._clock.ns, self._typestore.serialize_cdr(msg, connection.msgtype))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lens-bag", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="input rosbag2 directory (sqlite3 or MCAP)")
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic to segment")
    queries = parser.add_mutually_exclusive_group(required=True)
    queries.add_argument("--query", help="run this text on every --stride-th frame (with --track: the first frame)")
    queries.add_argument("--query-topic", help="std_msgs/String topic in the input bag holding the queries")
    parser.add_argument("--output", required=True, type=Path, help="output bag directory (must not exist)")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="sqlite3",
                        help="output storage (default sqlite3)")
    parser.add_argument("--stride", type=int, default=None,
                        help="with --query: segment every N-th frame (default 1; with --track, only the first "
                             "frame unless given: the track fills the frames in between)")
    parser.add_argument("--track", action="store_true",
                        help="track the target of each query on every later frame (tracking.enabled), writing "
                             "the track topics: masks for the whole recording from one query")
    parser.add_argument("--params-file", help="ROS 2 parameters YAML, as for lens_node")
    parser.add_argument("--namespace", default="/lens", help="namespace of the output topics (default /lens)")
    parser.add_argument("--model", help="override model.name")
    parser.add_argument("--device", help="override model.device")
    parser.add_argument("--debug-image", action="store_true", help="also write the overlay image topic")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def load_params(args: argparse.Namespace) -> LensParams:
    values = read_params_file(args.params_file, "lens_node", args.namespace) if args.params_file else {}
    values.update(command_line_overrides(model=args.model, device=args.device, debug_image=args.debug_image or None,
                                         tracking=args.track or None))
    return LensParams.from_ros(values)


def input_image_type(reader: AnyReader, args: argparse.Namespace) -> str:
    """The message type of the image topic, after checking that the input bag has what the run needs."""
    topics = {c.topic: c.msgtype for c in reader.connections}
    listing = ", ".join(f"{topic} ({msgtype})" for topic, msgtype in sorted(topics.items()))
    image_type = topics.get(args.image_topic)
    if image_type is None:
        raise BagError(f"image topic {args.image_topic} is missing from the input bag; topics: {listing}")
    if image_type not in (IMAGE, COMPRESSED_IMAGE):
        raise BagError(f"image topic {args.image_topic} is {image_type} in the input bag, not an image")
    if args.query_topic and topics.get(args.query_topic) != STRING:
        raise BagError(f"query topic {args.query_topic} is not a {STRING} topic of the input bag; topics: {listing}")
    return image_type


def replay(args: argparse.Namespace, params: LensParams, load: Loader = load_segmenter,
           track: TrackerOpener = open_tracker) -> dict[str, int]:
    """Run the replay; returns how many results of each status, and of tracked and lost frames, were written."""
    if args.stride is not None and args.stride < 1:
        raise BagError("--stride must be >= 1")
    if not args.input.exists():
        raise BagError(f"input bag {args.input} does not exist")
    if args.output.exists():
        raise BagError(f"output {args.output} exists already; choose a new path")
    typestore = lens_typestore()
    clock = BagClock()
    with AnyReader([args.input], default_typestore=typestore) as reader:
        image_type = input_image_type(reader, args)
        # fail before creating the output bag
        segmenter = load(params.model_name, params.device, params.dtype)
        opened = [track(segmenter, params)] if params.tracking else []  # an unusable tracker fails here

        def open_tracker_once_opened(model: Any, settings: LensParams) -> Any:
            return opened.pop() if opened else track(model, settings)  # the service opens one per instance

        with Writer(args.output, version=8, storage_plugin=STORAGES[args.storage]) as writer:
            sink = BagSink(writer, typestore, OutputTopics.from_params(params, args.namespace, "lens_node"), clock)
            service = LensService(params, rosbags_kit(typestore), sink, clock, image_source=args.image_topic,
                                  load=lambda *_: segmenter, track=open_tracker_once_opened, synchronous=True)
            service.activate()
            try:
                _replay_messages(reader, args, service, clock, image_type)
                if params.tracking:
                    service.stop_tracking("end of the input bag")
                service.publish_diagnostics()
            finally:
                service.deactivate()
    events = service.stats.track_events
    return {**service.stats.results, "tracked": events[TRACKING], "lost": events[LOST]}


def _replay_messages(reader: AnyReader, args: argparse.Namespace, service: LensService, clock: BagClock,
                     image_type: str) -> None:
    connections = [c for c in reader.connections if c.topic in (args.image_topic, args.query_topic)]
    total = sum(c.msgcount for c in connections)
    on_frame = service.on_compressed_image if image_type == COMPRESSED_IMAGE else service.on_image
    stride = args.stride or (0 if service.params.tracking else 1)  # 0: the first frame only
    frames_seen = 0
    next_diagnostics_ns = None
    period_ns = int(service.params.diagnostics_period_s * 1e9)
    for connection, timestamp, raw in tqdm(reader.messages(connections=connections), total=total, unit="msg",
                                           disable=args.no_progress, desc="lens-bag"):
        clock.ns = timestamp
        msg = reader.deserialize(raw, connection.msgtype)
        if connection.topic == args.image_topic:
            on_frame(msg)
            frames_seen += 1
            if args.query is not None and (frames_seen == 1 or stride and (frames_seen - 1) % stride == 0):
                service.on_query(args.query)
        else:
            service.on_query(msg.data)
        if next_diagnostics_ns is None or timestamp >= next_diagnostics_ns:
            service.publish_diagnostics()
            next_diagnostics_ns = timestamp + period_ns


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)s] [%(name)s] %(message)s")
    try:
        statuses = replay(args, load_params(args))
    except (BagError, ParameterError, LensError, AnyReaderError, WriterError) as exc:
        log.error("%s", exc)
        return 2
    print(f"wrote {args.output}: {statuses[OK]} ok, {statuses[NO_TARGET]} no_target, {statuses[NO_BOX]} no_box, "
          f"{statuses[ERROR]} error results; {statuses['tracked']} tracked frames, {statuses['lost']} lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
