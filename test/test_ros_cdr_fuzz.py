"""Hostile CDR on the DDS transport's receive path (property tests).

Whatever bytes arrive, handling a sample never raises, and every query sample that DDS delivers
gets exactly one result. The node here is not activated, so each query is answered at once (with
"node is not active" or its validation error): no model and no worker thread, deterministic.
"""
from __future__ import annotations

import logging
import signal
import struct
from collections.abc import Iterator
from typing import Any

import cv2
import pytest
from cyclonedds._clayer import ddspy_write
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl._support import Endianness
from cyclonedds.pub import DataWriter
from cyclonedds.topic import Topic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ros_fixtures import FakeSegmenter, RecordingSink, image_msg, loopback_dds, pattern_image, unique_domain_id

from lens_ros.core import messages
from lens_ros.core.frames import Stamp
from lens_ros.core.names import dds_topic_name
from lens_ros.core.params import LensParams
from lens_ros.core.publishing import Output
from lens_ros.msgs import idl
from lens_ros.transports.dds import DdsNode, NodeInput, ros_qos, string_payload

KIT = idl.dds_kit()
PARAMS = LensParams.from_ros({"model.name": "fake", "topics.compressed_image": "/camera/image_raw/compressed",
                              "queries.max_length": 50})
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
HANG_LIMIT_S = 60  # a watchdog, not a latency bound: a test that reaches it has hung
DROPPED = "dropped malformed sample on"


class RecordingNode(DdsNode):
    """The DDS node with its outputs recorded instead of written to DDS."""

    def __init__(self, domain_id: int) -> None:
        self.sink = RecordingSink()
        super().__init__(PARAMS, domain_id=domain_id, load=lambda name, device, dtype: FakeSegmenter())

    def _publish(self, output: Output, msg: Any) -> None:
        self.sink(output, msg)


class Wired:
    """A node with its readers, and raw writers on the same topics (in this process: synchronous delivery)."""

    def __init__(self, domain_id: int) -> None:
        self.node = RecordingNode(domain_id)
        self.inputs = {item.topic: item for item in self.node.create_inputs()}
        participant = DomainParticipant(domain_id)
        types = {self.node.resolve(PARAMS.image_topic): idl.Image,
                 self.node.resolve(PARAMS.compressed_image_topic): idl.CompressedImage,
                 self.node.resolve(PARAMS.query_topic): idl.String}
        self.writers = {name: DataWriter(participant, Topic(participant, dds_topic_name(name), msg_type),
                                         qos=ros_qos("reliable", 1000)) for name, msg_type in types.items()}
        self.query_topic = self.node.resolve(PARAMS.query_topic)

    def write(self, topic: str, cdr: bytes) -> bool:
        """Write raw CDR; False when DDS itself refuses it as malformed for the topic's type."""
        return ddspy_write(self.writers[topic]._ref, cdr) >= 0

    def results(self) -> list[dict[str, Any]]:
        return self.node.sink.results()


@pytest.fixture(scope="module")
def wired() -> Iterator[Wired]:
    with loopback_dds(unique_domain_id(offset=1)) as domain_id:  # not the e2e test's domain
        yield Wired(domain_id)


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {HANG_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def string_cdr(data: bytes, endianness: Endianness = Endianness.Little) -> bytes:
    """A std_msgs/String sample holding ``data`` as it is, valid UTF-8 or not."""
    order, kind = ("<", b"\x00\x01") if endianness is Endianness.Little else (">", b"\x00\x00")
    return kind + b"\x00\x00" + struct.pack(order + "I", len(data) + 1) + data + b"\x00"


def _image_samples() -> dict[str, bytes]:
    header = messages.header(KIT, Stamp.from_seconds(1000.0), "camera")
    ok, png = cv2.imencode(".png", pattern_image(6, 8))
    assert ok
    return {PARAMS.image_topic: image_msg(pattern_image(6, 8), "rgb8", 1000.0, kit=KIT).serialize(),
            "/camera/image_raw/compressed": idl.CompressedImage(header=header, format="png",
                                                                 data=png.tobytes()).serialize()}


IMAGE_SAMPLES = _image_samples()
QUERY_SAMPLE = idl.String(data="the red mug").serialize()


def mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` truncated, with a byte changed, with a length field overwritten, extended, or replaced."""
    def overwrite(offset: int, value: int) -> bytes:
        return base[:offset] + struct.pack("<I", value) + base[offset + 4:]

    return st.one_of(
        st.integers(0, len(base) - 1).map(lambda n: base[:n]),
        st.tuples(st.integers(0, len(base) - 1), st.integers(1, 255)).map(
            lambda t: base[:t[0]] + bytes([base[t[0]] ^ t[1]]) + base[t[0] + 1:]),
        st.tuples(st.integers(0, len(base) - 4),
                  st.sampled_from([0, 1, len(base), 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])).map(lambda t: overwrite(*t)),
        st.binary(min_size=1, max_size=64).map(lambda extra: base + extra),
        st.binary(max_size=len(base) + 16),
    )


@FUZZ
@given(st.binary(max_size=80))
def test_string_payload_returns_bytes_or_raises_value_error(cdr):
    try:
        payload = string_payload(cdr)
    except ValueError:
        return
    assert isinstance(payload, bytes) and len(payload) <= len(cdr) - 9


@FUZZ
@given(st.text(max_size=200), st.sampled_from(list(Endianness)))
def test_string_payload_reads_well_formed_samples_of_either_byte_order(text, endianness):
    cdr = idl.String(data=text).serialize(endianness=endianness)
    assert cdr == string_cdr(text.encode(), endianness)
    assert string_payload(cdr) == text.encode()


@FUZZ
@given(st.sampled_from(sorted(IMAGE_SAMPLES)).flatmap(lambda topic: st.tuples(
    st.just(topic), mutations(IMAGE_SAMPLES[topic]))))
def test_mutated_frames_are_either_buffered_whole_or_dropped_with_a_log_line(wired, caplog, case):
    topic, cdr = case
    item: NodeInput = wired.inputs[topic]
    frames = wired.node.service.frames
    before = frames.received
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lens_ros.transports.dds"):
        item.accept(cdr)  # must not raise
    if frames.received == before:
        assert f"{DROPPED} {topic}" in caplog.text
    else:
        frame = frames.peek()
        assert frame.compressed == topic.endswith("compressed") and isinstance(frame.frame_id, str)


def query_samples() -> st.SearchStrategy[bytes]:
    """Well-formed queries (any text, invalid UTF-8 included, also over queries.max_length) and mutated ones."""
    return st.one_of(
        st.text(max_size=80).map(lambda text: idl.String(data=text).serialize()),
        st.binary(max_size=80).filter(lambda data: b"\x00" not in data).map(string_cdr),
        mutations(QUERY_SAMPLE),
    )


def any_samples() -> st.SearchStrategy[tuple[str, bytes]]:
    """(topic, CDR): a query sample, or a mutated frame on one of the image topics."""
    frames = [mutations(cdr).map(lambda mutated, topic=topic: (topic, mutated)) for topic, cdr in IMAGE_SAMPLES.items()]
    return st.one_of(query_samples().map(lambda cdr: ("query", cdr)), *frames)


@FUZZ
@given(st.lists(any_samples(), max_size=12))
def test_every_query_sample_dds_delivers_gets_exactly_one_result(wired, samples):
    before = len(wired.results())
    delivered = 0
    for topic, cdr in samples:
        if topic == "query":
            delivered += wired.write(wired.query_topic, cdr)
        else:
            wired.write(topic, cdr)
    for item in wired.inputs.values():
        item.drain()  # must not raise
    results = wired.results()[before:]
    assert len(results) == delivered
    assert len({r["query_id"] for r in results}) == delivered
    assert all(r["status"] == "error" and r["error"] for r in results)
