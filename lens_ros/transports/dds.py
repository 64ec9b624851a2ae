"""The node over CycloneDDS, speaking the ROS 2 wire format (rmw_cyclonedds) with no ROS install.

ROS topic ``/lens/query`` is DDS topic ``rt/lens/query``; types carry ROS 2 wire names such as
``sensor_msgs::msg::dds_::Image_``; data is XCDR1, as ROS 2 sends it. The node does not announce
itself in the ROS graph (``ros2 node list``), but its topics are visible and interoperable.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cyclonedds._clayer import ddspy_take  # raw CDR, so one bad sample cannot break a batch
from cyclonedds.core import InstanceState, ReadCondition, SampleState, ViewState, WaitSet
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy, Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from lens_ros.core.names import dds_topic_name, resolve_topic
from lens_ros.core.params import LensParams, ParameterError
from lens_ros.core.publishing import Output, history_depth, message_class_name, output_topics
from lens_ros.core.segmenter import TrackerOpener, load_segmenter, open_tracker
from lens_ros.core.service import RESULT_FLUSH_S, SHUTDOWN_GRACE_S, LensService, Loader
from lens_ros.msgs import idl

log = logging.getLogger(__name__)

ANY_SAMPLE = SampleState.Any | ViewState.Any | InstanceState.Any
# CYCLONEDDS_URI that keeps discovery and data on the loopback interface, without multicast: for
# running node and clients on one machine (tests, benchmarks). The socket buffer request (capped by
# the kernel's net.core.rmem_max, never an error) lets best-effort 1080p frames arrive whole.
LOOPBACK_CYCLONEDDS_URI = (
    "<CycloneDDS><Domain id='any'><General><Interfaces><NetworkInterface name='lo'/></Interfaces>"
    "<AllowMulticast>false</AllowMulticast></General>"
    "<Internal><SocketReceiveBufferSize max='16MB'/></Internal>"
    "<Discovery><ParticipantIndex>auto</ParticipantIndex>"
    "<Peers><Peer address='127.0.0.1'/></Peers></Discovery></Domain></CycloneDDS>"
)
MAX_DOMAIN_ID = 232


def ros_qos(reliability: str, depth: int) -> Qos:
    """The DDS QoS an rclpy endpoint with this reliability and KEEP_LAST depth would use."""
    reliable = Policy.Reliability.Reliable(duration(seconds=1)) if reliability == "reliable" \
        else Policy.Reliability.BestEffort
    return Qos(reliable, Policy.History.KeepLast(depth), Policy.Durability.Volatile,
               Policy.DataRepresentation(use_cdrv0_representation=True))


def bounded_reader_qos(depth: int) -> Qos:
    """A reliable subscription that holds up to ``depth`` samples and overwrites none: when it is full,
    DDS refuses the next sample unacknowledged and the writer resends it later. (KEEP_LAST would
    silently replace the oldest sample not yet taken.) History kind does not affect matching."""
    return Qos(Policy.Reliability.Reliable(duration(seconds=1)), Policy.History.KeepAll,
               Policy.ResourceLimits(max_samples=depth), Policy.Durability.Volatile,
               Policy.DataRepresentation(use_cdrv0_representation=True))


def domain_id_from_env() -> int:
    raw = os.environ.get("ROS_DOMAIN_ID", "0") or "0"
    if not raw.isdigit() or int(raw) > MAX_DOMAIN_ID:
        raise ParameterError(f"ROS_DOMAIN_ID must be an integer 0..{MAX_DOMAIN_ID}, got {raw!r}")
    return int(raw)


def string_payload(cdr: bytes) -> bytes:
    """The raw bytes of a serialised std_msgs/String, undecoded, so that non-UTF-8 queries get an error result."""
    if len(cdr) < 8:
        raise ValueError(f"std_msgs/String sample of {len(cdr)} bytes is too short")
    byte_order = "<" if cdr[1] & 1 else ">"  # encapsulation id: odd = little endian
    (length,) = struct.unpack_from(byte_order + "I", cdr, 4)
    if length == 0 or 8 + length > len(cdr):
        raise ValueError(f"std_msgs/String sample declares {length} bytes but holds {len(cdr) - 8}")
    return cdr[8:8 + length - 1]  # drop the terminating NUL


@dataclass
class NodeInput:
    """One subscription of the node and the handler of its raw samples."""

    reader: DataReader
    handle: Callable[[bytes], None]
    topic: str
    depth: int  # the most samples the reader holds: one take empties it

    def drain(self) -> None:
        """Take everything the reader holds: a full query reader refuses new samples until then, and each
        query taken meets the bounded QueryQueue at once (its overflow gets error results)."""
        taken = ddspy_take(self.reader._ref, ANY_SAMPLE, self.depth)
        if isinstance(taken, int):
            log.error("taking samples from %s failed with DDS code %d", self.topic, taken)
            return
        for raw, info in taken:
            if info.valid_data:
                self.accept(raw)

    def accept(self, raw: bytes) -> None:
        """Handle one sample; a malformed one is logged and skipped, so the node keeps serving."""
        try:
            self.handle(raw)
        except Exception as exc:
            log.warning("dropped malformed sample on %s: %s: %s", self.topic, type(exc).__name__, exc)


class DdsNode:
    """Owns the DDS entities and a LensService; ``run`` blocks until ``stop`` is set."""

    def __init__(
        self,
        params: LensParams,
        *,
        namespace: str = "/lens",
        node_name: str = "lens_node",
        domain_id: int | None = None,
        load: Loader = load_segmenter,
        track: TrackerOpener = open_tracker,
    ) -> None:
        self.params = params
        self._namespace = namespace
        self._node_name = node_name
        self._participant = DomainParticipant(domain_id_from_env() if domain_id is None else domain_id)
        self._writers = {
            output: DataWriter(self._participant, self._topic(name, getattr(idl, message_class_name(output))),
                               qos=ros_qos(params.output_reliability, history_depth(params, output)))
            for output, name in output_topics(params).items()
        }
        self.image_topic = self.resolve(params.image_topic)
        self.service = LensService(
            params, idl.dds_kit(), self._publish, time.time,
            image_source=self.image_topic, diagnostics_name=f"{node_name}: segmentation", load=load, track=track)

    def resolve(self, name: str) -> str:
        return resolve_topic(name, self._namespace, self._node_name)

    def _topic(self, name: str, msg_type: type) -> Topic:
        return Topic(self._participant, dds_topic_name(self.resolve(name)), msg_type)

    def _publish(self, output: Output, msg: Any) -> None:
        self._writers[output].write(msg)

    def create_inputs(self) -> list[NodeInput]:
        p = self.params
        image_qos = ros_qos(p.image_reliability, p.image_depth)
        image_reader = DataReader(self._participant, self._topic(p.image_topic, idl.Image), qos=image_qos)
        inputs = [NodeInput(image_reader, lambda raw: self.service.on_image(idl.Image.deserialize(raw)),
                            self.image_topic, p.image_depth)]
        if p.compressed_image_topic:
            reader = DataReader(self._participant, self._topic(p.compressed_image_topic, idl.CompressedImage),
                                qos=image_qos)
            inputs.append(NodeInput(reader, lambda raw: self.service.on_compressed_image(
                idl.CompressedImage.deserialize(raw)), self.resolve(p.compressed_image_topic), p.image_depth))
        if p.tracking:  # no ROS services without rmw: a stop is any sample on this topic, as on the rclpy node
            stop_topic = self.resolve(p.track_stop_topic)
            stop_reader = DataReader(self._participant, self._topic(p.track_stop_topic, idl.String),
                                     qos=ros_qos("reliable", 1))
            inputs.append(NodeInput(stop_reader, lambda raw: self.service.stop_tracking(
                f"stop requested on {stop_topic}"), stop_topic, 1))
        # Queries last: a frame and a query that arrive together are handled frame first, and a stop
        # taken with a query stops the old track only.
        query_reader = DataReader(self._participant, self._topic(p.query_topic, idl.String),
                                  qos=bounded_reader_qos(p.query_depth))
        inputs.append(NodeInput(query_reader, lambda raw: self.service.on_query(string_payload(raw)),
                                self.resolve(p.query_topic), p.query_depth))
        return inputs

    def run(self, stop: threading.Event) -> None:
        self.service.activate()
        inputs = self.create_inputs()
        waitset = WaitSet(self._participant)
        for item in inputs:
            waitset.attach(ReadCondition(item.reader, ANY_SAMPLE))
        log.info("%s ready on DDS domain %d: image %s, queries %s", self._node_name,
                 self._participant.domain_id, self.image_topic, inputs[-1].topic)
        next_diagnostics = 0.0
        try:
            while not stop.is_set():
                waitset.wait(duration(milliseconds=100))
                for item in inputs:
                    item.drain()
                if time.monotonic() >= next_diagnostics:
                    self.service.publish_diagnostics()
                    next_diagnostics = time.monotonic() + self.params.diagnostics_period_s
        finally:
            if self.service.deactivate(SHUTDOWN_GRACE_S, free_memory=False):  # the process ends next
                self._writers[Output.RESULT].wait_for_acks(duration(seconds=RESULT_FLUSH_S))
