"""Scheduling without ROS: latest frame, max age, queue policy, worker thread, exactly one result per query."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ros_fixtures import FakeSegmenter, ManualClock, RecordingSink, image_msg, make_service, pattern_image

from lens_ros.core.frames import Frame, LatestFrameBuffer
from lens_ros.core.publishing import Output
from lens_ros.core.queries import DROP_OLDEST, REJECT_NEW, Query, QueryQueue, QueueClosed, decode_query

LONG = 3000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


def frame_at(stamp: float, received: float = 0.0) -> Frame:
    return Frame.from_msg(image_msg(pattern_image(), "rgb8", stamp), compressed=False, received_s=received)


def test_frame_buffer_keeps_only_the_newest_and_counts_unused_replacements():
    buffer = LatestFrameBuffer()
    assert buffer.take_latest() is None
    buffer.put(frame_at(1.0))
    buffer.put(frame_at(2.0))  # replaces an unused frame
    assert buffer.take_latest().stamp.seconds == 2.0
    buffer.put(frame_at(3.0))  # replaces a used frame: not counted
    assert (buffer.received, buffer.replaced_unused) == (3, 1)
    assert buffer.take_latest().stamp.seconds == 3.0


def test_take_newer_gives_the_newest_frame_only_after_the_given_one():
    buffer = LatestFrameBuffer()
    assert buffer.take_newer(0) is None
    buffer.put(frame_at(1.0))
    buffer.put(frame_at(2.0))  # replaces an unused frame
    newest = buffer.take_newer(0)
    assert (newest.seq, newest.stamp.seconds) == (2, 2.0)
    assert buffer.take_newer(newest.seq) is None  # nothing new since
    buffer.put(frame_at(3.0))  # replaces a used frame: not counted
    assert buffer.take_newer(newest.seq).seq == 3 and buffer.replaced_unused == 1


def test_wake_ends_a_wait_for_a_query_once():
    queue = QueryQueue(2, DROP_OLDEST)
    queue.wake()
    started = time.monotonic()
    assert queue.get(timeout_s=5.0) is None and time.monotonic() - started < 1.0
    started = time.monotonic()
    assert queue.get(timeout_s=0.2) is None and time.monotonic() - started >= 0.19  # the wake was used up
    queue.wake()
    queue.put(Query(1, "a", 0.0))
    assert queue.get(timeout_s=5.0).id == 1


@pytest.mark.parametrize("policy, survivors, loser", [(DROP_OLDEST, [2, 3], 1), (REJECT_NEW, [1, 2], 3)])
def test_query_queue_policy_when_full(policy, survivors, loser):
    queue = QueryQueue(2, policy)
    assert queue.put(Query(1, "a", 0.0)) is None
    assert queue.put(Query(2, "b", 0.0)) is None
    assert queue.put(Query(3, "c", 0.0)).id == loser
    assert [queue.get(0.01).id for _ in range(2)] == survivors
    assert queue.get(0.01) is None


def test_closed_queue_refuses_and_returns_waiting_queries():
    queue = QueryQueue(4, DROP_OLDEST)
    queue.put(Query(1, "a", 0.0))
    assert [q.id for q in queue.close()] == [1]
    with pytest.raises(QueueClosed):
        queue.put(Query(2, "b", 0.0))


@pytest.mark.parametrize("data, message", [
    ("", "query is empty"),
    ("   \n\t ", "query is empty"),
    ("x" * LONG, f"query is {LONG} characters long; the limit is 2000"),
    (b"caf\xff", "query is not valid UTF-8 (byte 0xff at offset 3)"),
    ("caf\ufffd", "query is not valid UTF-8"),
])
def test_bad_query_text_is_rejected_with_a_clear_message(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_query(data, max_length=2000)


def test_query_text_is_stripped_and_utf8_bytes_accepted():
    assert decode_query(b"  the red cup \n", 100) == "the red cup"
    assert decode_query("le caf\u00e9", 100) == "le caf\u00e9"


def test_query_runs_on_the_newest_frame_in_a_worker_thread(clock, sink):
    segmenter = FakeSegmenter()
    service = make_service(segmenter, clock, sink)
    service.activate()
    try:
        calling_thread = threading.current_thread()
        service.on_image(image_msg(pattern_image(), "rgb8", 999.5))
        newest = pattern_image()[::-1].copy()
        service.on_image(image_msg(newest, "rgb8", 999.8, frame_id="newest"))
        service.on_query("the thing")
        (result,) = sink.wait_for_results(1)
    finally:
        service.deactivate()
    assert result["status"] == "ok"
    assert result["frame_id"] == "newest" and result["stamp"] == {"sec": 999, "nanosec": 800000000}
    np.testing.assert_array_equal(segmenter.images[0], newest)
    assert segmenter.threads and segmenter.threads[0] is not calling_thread  # inference ran on the worker
    assert result["frame_age_s"] == pytest.approx(0.2)


def test_stale_frame_and_missing_frame_give_error_results(clock, sink):
    service = make_service(FakeSegmenter(), clock, sink, synchronous=True, **{"frames.max_age_s": 0.5})
    service.activate()
    service.on_query("anything")
    service.on_image(image_msg(pattern_image(), "rgb8", 999.0))  # 1.0 s old at clock 1000
    service.on_query("anything")
    no_frame, stale = sink.results()
    assert no_frame["status"] == "error" and "no image received yet on /camera/image_raw" in no_frame["error"]
    assert no_frame["stamp"] is None and no_frame["frame_id"] is None
    assert stale["status"] == "error" and "1.000 s old" in stale["error"] and "frames.max_age_s = 0.5" in stale["error"]
    assert sink.of(Output.MASK) == []


def test_max_age_zero_disables_the_age_check(clock, sink):
    service = make_service(FakeSegmenter(), clock, sink, synchronous=True, **{"frames.max_age_s": 0})
    service.activate()
    service.on_image(image_msg(pattern_image(), "rgb8", 0.0))  # unset camera stamp
    service.on_query("anything")
    assert sink.results()[0]["status"] == "ok"


TEN_YEARS_S = 10 * 365 * 86400.0


def test_frame_stamped_beyond_the_clock_skew_tolerance_is_refused_and_a_later_good_frame_replaces_it(clock, sink):
    segmenter = FakeSegmenter()
    service = make_service(segmenter, clock, sink, synchronous=True)  # frames.max_future_s: 0.5 by default
    service.activate()
    service.on_image(image_msg(pattern_image(), "rgb8", clock.now + TEN_YEARS_S, frame_id="future"))
    service.on_query("x")
    clock.now += 60.0  # a future frame never grows stale: it must still be refused
    service.on_query("x")
    service.on_image(image_msg(pattern_image(), "rgb8", clock.now - 0.1, frame_id="good"))
    service.on_query("x")
    service.on_image(image_msg(pattern_image(), "rgb8", clock.now + 0.4, frame_id="skewed"))  # within tolerance
    service.on_query("x")
    refused, still_refused, good, skewed = sink.results()
    assert refused["status"] == still_refused["status"] == "error" and refused["frame_id"] == "future"
    assert refused["error"].startswith(
        f"newest frame is stamped {TEN_YEARS_S:.3f} s in the future (stamp {1000.0 + TEN_YEARS_S:.3f}, "
        "frame_id 'future', this host's clock 1000.000), more than frames.max_future_s = 0.5")
    assert "this host's clock 1060.000" in still_refused["error"]
    assert (good["status"], good["frame_id"], skewed["status"]) == ("ok", "good", "ok")
    assert len(segmenter.calls) == 2


def test_max_future_zero_disables_the_clock_skew_check(clock, sink):
    service = make_service(FakeSegmenter(), clock, sink, synchronous=True, **{"frames.max_future_s": 0})
    service.activate()
    service.on_image(image_msg(pattern_image(), "rgb8", clock.now + 3600.0))
    service.on_query("anything")
    assert sink.results()[0]["status"] == "ok"


def test_frames_arriving_during_inference_replace_the_buffered_one(clock, sink):
    gate = threading.Event()
    segmenter = FakeSegmenter(gate=gate)
    service = make_service(segmenter, clock, sink)
    service.activate()
    try:
        service.on_image(image_msg(pattern_image(), "rgb8", 999.9, frame_id="first"))
        service.on_query("one")
        assert segmenter.started.wait(5)
        for i in range(5):
            service.on_image(image_msg(pattern_image(), "rgb8", 999.91 + i * 0.01, frame_id=f"during{i}"))
        service.on_query("two")
        gate.set()
        results = sink.wait_for_results(2)
    finally:
        service.deactivate()
    assert [r["frame_id"] for r in results] == ["first", "during4"]
    assert service.frames.replaced_unused == 4


@pytest.mark.parametrize("policy, failed, ran", [("drop_oldest", "q2", ["q1", "q3", "q4"]),
                                                 ("reject_new", "q4", ["q1", "q2", "q3"])])
def test_full_queue_answers_the_loser_with_an_error_and_every_query_gets_one_result(clock, sink, policy, failed, ran):
    gate = threading.Event()
    segmenter = FakeSegmenter(gate=gate)
    service = make_service(segmenter, clock, sink, **{"queries.queue_size": 2, "queries.full_policy": policy})
    service.activate()
    try:
        service.on_image(image_msg(pattern_image(), "rgb8", 999.9))
        service.on_query("q1")
        assert segmenter.started.wait(5)  # q1 is running, the queue is empty
        for text in ("q2", "q3", "q4"):
            service.on_query(text)
        gate.set()
        results = sink.wait_for_results(4)
    finally:
        service.deactivate()
    by_query = {r["query"]: r for r in results}
    assert len(results) == 4 and sorted(r["query_id"] for r in results) == [1, 2, 3, 4]
    assert by_query[failed]["status"] == "error" and "query queue full" in by_query[failed]["error"]
    assert [call[1] for call in segmenter.calls] == ran
    assert service.stats.queries_evicted == 1


def test_deactivate_answers_waiting_queries_and_later_queries_fail_cleanly(clock, sink):
    gate = threading.Event()
    segmenter = FakeSegmenter(gate=gate)
    service = make_service(segmenter, clock, sink)
    service.activate()
    service.on_image(image_msg(pattern_image(), "rgb8", 999.9))
    service.on_query("running")
    assert segmenter.started.wait(5)
    service.on_query("waiting")
    gate.set()
    service.deactivate(timeout_s=5)
    service.on_query("after")
    results = {r["query"]: r for r in sink.results()}
    assert results["running"]["status"] == "ok"
    assert results["waiting"]["error"] == "node deactivated before this query ran"
    assert results["after"]["error"] == "node is not active (no model loaded)"
    assert not service.active


@pytest.mark.parametrize("behaviour, status, message", [
    ("raise", "error", "model failed: RuntimeError: boom inside the model"),
    ("oom", "error", "model ran out of accelerator memory"),
    ("bad_mask", "error", "mask for a (48, 64) frame"),
    ("no_box", "no_box", None),
])
def test_model_failures_become_results_and_the_node_keeps_serving(clock, sink, behaviour, status, message):
    segmenter = FakeSegmenter(behaviour)
    service = make_service(segmenter, clock, sink, synchronous=True)
    service.activate()
    service.on_image(image_msg(pattern_image(), "rgb8", 999.9))
    service.on_query("first")
    segmenter.behaviour = "ok"
    service.on_query("second")
    first, second = sink.results()
    assert first["status"] == status
    if message:
        assert message in first["error"]
        assert first["frame_id"] == "camera"  # the frame the failure concerns
    assert second["status"] == "ok"


def test_bad_image_gives_an_error_result_and_the_next_good_frame_works(clock, sink):
    service = make_service(FakeSegmenter(), clock, sink, synchronous=True)
    service.activate()
    bad = image_msg(pattern_image(), "rgb8", 999.9)
    bad.encoding = "yuv422"
    service.on_image(bad)
    service.on_query("x")
    service.on_image(image_msg(pattern_image(), "rgb8", 999.95))
    service.on_query("x")
    bad_result, good_result = sink.results()
    assert bad_result["error"].startswith("bad image: unsupported image encoding 'yuv422'")
    assert good_result["status"] == "ok"


def test_parameters_reach_the_model(clock, sink):
    segmenter = FakeSegmenter()
    service = make_service(segmenter, clock, sink, synchronous=True,
                           **{"model.template": "reasoning", "model.max_new_tokens": 0})
    service.activate()
    service.on_image(image_msg(pattern_image(), "bgr8", 999.9))
    service.on_query("x")
    assert segmenter.calls == [((48, 64, 3), "x", "reasoning", None)]
