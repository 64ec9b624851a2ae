"""Tracking between queries in the ROS-free core, with FakeTracker: every later frame gets a step stamped
with that frame, at most tracking.max_rate_hz; queries go first; dropped frames are counted; bad frames
give error statuses and the track goes on; lost frames (the track goes on), lost and periodic
re-acquisition; stop; diagnostics."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from ros_fixtures import (
    KIT, FakeSegmenter, FakeTracker, ManualClock, RecordingSink, ShiftedTracker, image_msg, make_service, marked,
    raw_image_msg, wait_until)

from lens_ros.core.frames import Frame, LatestFrameBuffer, Stamp
from lens_ros.core.outcome import QueryOutcome
from lens_ros.core.params import LensParams
from lens_ros.core.publishing import Output, TrackPublisher, output_topics
from lens_ros.core.queries import Query
from lens_ros.core.service import LensService
from lens_ros.core.stats import NodeStats
from lens_ros.core.tracking import TrackerPool, Tracking

T0 = 1000.0
TRACK_OUTPUTS = (Output.TRACK_MASK, Output.TRACK_INSTANCES, Output.TRACK_DETECTIONS, Output.TRACK_STATUS)
STATUS_KEYS = {"instances", "schema", "query_id", "origin_query_id", "query", "status", "stamp", "frame_id", "score", "box",
               "mask_area", "frames_dropped", "error", "reason", "timings_ms"}


def frame(index: int, **size) -> object:
    """Frame ``index``: stamped T0 + index / 10, frame_id f<index>, the index in pixel [0, 0, 0]."""
    return image_msg(marked(index, **size), "rgb8", T0 + index / 10, frame_id=f"f{index}")


def tracking_service(segmenter: FakeSegmenter | None = None, *, synchronous: bool = True, **overrides):
    clock, sink = ManualClock(T0), RecordingSink()
    segmenter = segmenter or FakeSegmenter()
    service = make_service(segmenter, clock, sink, synchronous=synchronous,
                           **{"tracking.enabled": True, "frames.max_age_s": 0.0, **overrides})
    service.activate()
    return service, segmenter, sink, clock


def gated_service(**overrides):
    """An asynchronous service whose model waits for ``gate`` (open at first); returns it with the gate."""
    gate = threading.Event()
    gate.set()
    return (*tracking_service(FakeSegmenter(gate=gate), synchronous=False, **overrides), gate)


def seed(service: LensService, segmenter: FakeSegmenter) -> None:
    """Frame 0 and a query that finds its target on it; returns once the track started."""
    service.on_image(frame(0))
    service.on_query("the thing")
    assert wait_until(lambda: segmenter.fake_tracker.started_on[:1] == [0], 10)


def statuses(sink: RecordingSink) -> list[dict]:
    return [json.loads(msg.data) for msg in sink.of(Output.TRACK_STATUS)]


def stamp_of(msg) -> tuple[int, int, str]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id


def frame_stamp(index: int) -> tuple[int, int, str]:
    stamp = Stamp.from_seconds(T0 + index / 10)
    return stamp.sec, stamp.nanosec, f"f{index}"


def square_at(mask_msg) -> int:
    """Where FakeTracker drew its 4x4 square: the index of the frame the step ran on."""
    pixels = np.asarray(mask_msg.data, dtype=np.uint8).reshape(mask_msg.height, mask_msg.width)
    rows, cols = np.nonzero(pixels)
    assert set(np.unique(pixels)) == {0, 255} and len(rows) == 16 and rows.min() == cols.min()
    return int(rows.min())


def diagnostics(service: LensService, sink: RecordingSink) -> dict[str, str]:
    service.publish_diagnostics()
    return {kv.key: kv.value for kv in sink.of(Output.DIAGNOSTICS)[-1].status[0].values}


def test_a_query_that_found_its_target_starts_a_track_on_every_later_frame_stamped_with_that_frame():
    service, segmenter, sink, _ = tracking_service()
    service.on_image(frame(0))
    service.on_query("the thing")
    for index in (1, 2, 3):
        service.on_image(frame(index))
    (result,) = sink.results()
    assert result["status"] == "ok" and result["stamp"] == {"sec": 1000, "nanosec": 0}
    tracker = segmenter.fake_tracker
    assert tracker.started_on == [0] and tracker.stepped == [1, 2, 3]
    np.testing.assert_array_equal(tracker.seed_masks[0], segmenter.predict(marked(0), "x").mask)
    # the query's own outputs, its result last, then mask, detections and status per tracked frame
    assert [out for out, _ in sink.published] == [
        Output.MASK, Output.INSTANCES, Output.DETECTIONS, Output.REASONING, Output.RESULT, *TRACK_OUTPUTS * 3]
    for index, mask, detections, status in zip((1, 2, 3), sink.of(Output.TRACK_MASK),
                                               sink.of(Output.TRACK_DETECTIONS), statuses(sink), strict=True):
        assert stamp_of(mask) == stamp_of(detections) == stamp_of(detections.detections[0]) == frame_stamp(index)
        assert square_at(mask) == index and (mask.encoding, mask.height, mask.width) == ("mono8", 48, 64)
        (detection,) = detections.detections
        assert (detection.bbox.center.position.x, detection.bbox.size_x) == (index + 2.0, 4.0)
        assert detection.id == "1/1" and detection.results[0].hypothesis.class_id == "thing"
        assert detection.results[0].hypothesis.score == 0.9
        assert set(status) == STATUS_KEYS and status["schema"] == "lens_ros/track/2"
        sec, nanosec, frame_id = frame_stamp(index)
        assert (status["stamp"], status["frame_id"]) == ({"sec": sec, "nanosec": nanosec}, frame_id)
        assert (status["query_id"], status["origin_query_id"], status["query"]) == (1, 1, "the thing")
        assert (status["status"], status["score"]) == ("tracking", 0.9)
        assert status["box"] == [index, index, index + 4, index + 4]
        assert (status["mask_area"], status["frames_dropped"], status["error"], status["reason"]) == (16, 0, None, None)
        assert {"decode", "track_step", "node_total"} <= set(status["timings_ms"])


def test_tracking_is_off_by_default_no_tracker_is_opened_and_no_track_output_exists():
    clock, sink, segmenter = ManualClock(T0), RecordingSink(), FakeSegmenter()
    service = make_service(segmenter, clock, sink, synchronous=True, **{"frames.max_age_s": 0.0})
    service.activate()
    service.on_image(frame(0))
    service.on_query("the thing")
    service.on_image(frame(1))
    assert segmenter.tracker_args == [] and not any(out in TRACK_OUTPUTS for out, _ in sink.published)
    assert not set(TRACK_OUTPUTS) & set(output_topics(service.params))
    assert service.stop_tracking("test") == "tracking is off (tracking.enabled: false)"
    assert diagnostics(service, sink)["track_state"] == "off"


def test_the_tracker_gets_the_node_thresholds_and_memory_weights():
    _, segmenter, _, _ = tracking_service(**{
        "tracking.mode": "memory", "tracking.box_margin": 0.2, "tracking.min_score": 0.5,
        "tracking.min_area_ratio": 0.1, "tracking.max_area_ratio": 8.0, "tracking.memory_weights": "/w/sam2.pt"})
    assert segmenter.tracker_args == [({"mode": "memory", "box_margin": 0.2, "min_score": 0.5, "min_area_ratio": 0.1,
                                        "max_area_ratio": 8.0}, "/w/sam2.pt")]


def test_a_tracker_that_cannot_be_opened_fails_activation_with_the_reason():
    def refuse(segmenter, params):
        raise FileNotFoundError("no SAM 2 checkpoint at /w/sam2.pt")

    params = LensParams.from_ros({"model.name": "fake", "tracking.enabled": True})
    service = LensService(params, KIT, RecordingSink(), ManualClock(), image_source="/camera/image_raw",
                          load=lambda *_: FakeSegmenter(), track=refuse)
    with pytest.raises(FileNotFoundError):
        service.activate()
    assert not service.active
    assert service.activation_error == ("activate failed: cannot open a box tracker: FileNotFoundError: "
                                        "no SAM 2 checkpoint at /w/sam2.pt")


def test_a_failed_query_starts_no_track():
    service, segmenter, sink, _ = tracking_service(FakeSegmenter("no_box"))
    service.on_image(frame(0))
    service.on_query("the thing")
    service.on_image(frame(1))
    assert sink.results()[0]["status"] == "no_box" and segmenter.fake_tracker.started_on == []
    assert sink.of(Output.TRACK_STATUS) == []


def test_at_most_max_rate_hz_steps_each_on_the_newest_frame_and_skipped_frames_are_counted():
    service, segmenter, sink, clock = tracking_service(synchronous=False, **{"tracking.max_rate_hz": 10.0})
    tracker = segmenter.fake_tracker
    try:
        seed(service, segmenter)
        service.on_image(frame(1))
        assert wait_until(lambda: tracker.stepped == [1], 10)
        service.on_image(frame(2))  # 0 s after the last step: the node clock does not move, so no step may run
        time.sleep(0.3)
        assert tracker.stepped == [1]
        service.on_image(frame(3))  # replaces frame 2, which never got a step
        clock.now += 0.1
        assert wait_until(lambda: tracker.stepped == [1, 3], 10)
        assert wait_until(lambda: len(statuses(sink)) == 2, 5)
    finally:
        service.deactivate()
    assert [s["frames_dropped"] for s in statuses(sink)[:2]] == [0, 1]
    assert [square_at(m) for m in sink.of(Output.TRACK_MASK)] == [1, 3]
    assert diagnostics(service, sink)["track_frames_dropped"] == "1"


def test_a_query_goes_before_track_steps_and_frames_arriving_meanwhile_are_dropped_and_counted():
    service, segmenter, sink, clock, gate = gated_service()
    tracker = segmenter.fake_tracker
    try:
        seed(service, segmenter)
        service.on_image(frame(1))
        assert wait_until(lambda: tracker.stepped == [1], 10)
        gate.clear()
        service.on_query("the other thing")
        assert wait_until(lambda: len(segmenter.calls) == 2, 10)  # running on frame 1, held by the gate
        for index in (2, 3, 4):
            service.on_image(frame(index))
        clock.now += 1.0  # the rate limit allows a step
        time.sleep(0.3)
        assert tracker.stepped == [1]  # no step while the query runs
        gate.set()
        assert wait_until(lambda: tracker.stepped == [1, 4], 10)
        assert wait_until(lambda: len(statuses(sink)) == 2, 5)
        values = diagnostics(service, sink)
    finally:
        service.deactivate()
    second = statuses(sink)[1]
    assert (second["query_id"], second["frame_id"], second["frames_dropped"]) == (2, "f4", 2)
    assert tracker.started_on == [0, 1]
    assert values["track_frames_dropped"] == "2" and values["track_frames"] == "2"
    # a step never ran while the model ran a query
    running = False
    for kind, _ in segmenter.activity:
        assert not (running and kind == "step"), segmenter.activity
        running = {"predict": True, "done": False}.get(kind, running)
    assert len({*tracker.threads, *segmenter.threads}) == 1  # all on the one worker thread


def test_a_step_running_when_the_track_is_stopped_publishes_nothing():
    service, segmenter, sink, _ = tracking_service(synchronous=False)
    tracker = segmenter.fake_tracker
    try:
        seed(service, segmenter)
        tracker.gate = threading.Event()
        service.on_image(frame(1))
        assert tracker.stepping.wait(10)
        assert service.stop_tracking("stop requested by a test") == "stopped the track of query 1"
        tracker.gate.set()
        assert wait_until(lambda: tracker.stops == 1, 10)  # the worker freed the tracker's state
        service.on_image(frame(2))
        time.sleep(0.3)
    finally:
        service.deactivate()
    assert tracker.stepped == [1]
    assert sink.of(Output.TRACK_MASK) == [] and sink.of(Output.TRACK_DETECTIONS) == []
    (stopped,) = statuses(sink)
    assert (stopped["status"], stopped["query_id"], stopped["reason"]) == ("stopped", 1, "stop requested by a test")
    assert stopped["stamp"] is None and stopped["frame_id"] is None


def test_a_track_stopped_while_the_tracker_starts_never_runs():
    service, segmenter, sink, _ = tracking_service(synchronous=False)
    tracker = segmenter.fake_tracker
    tracker.gate = threading.Event()
    try:
        service.on_image(frame(0))
        service.on_query("the thing")
        assert tracker.starting.wait(10)  # the query's result is out; its track is starting
        assert service.stop_tracking("stop requested by a test") == "no track was running"
        tracker.gate.set()
        assert wait_until(lambda: tracker.started_on == [0], 10)
        service.on_image(frame(1))
        time.sleep(0.3)
    finally:
        service.deactivate()
    assert tracker.stepped == [] and statuses(sink) == []
    assert [r["status"] for r in sink.results()] == ["ok"]


def test_bad_frames_mid_track_get_error_statuses_and_the_track_goes_on():
    service, segmenter, sink, _ = tracking_service()
    tracker = segmenter.fake_tracker
    tracker.bad_mask_at = {5}
    seed(service, segmenter)
    service.on_image(frame(1))
    truncated = raw_image_msg(KIT, height=48, width=64, encoding="rgb8", step=192, data=bytes(100), stamp_s=T0 + 0.2)
    truncated.header.frame_id = "f2"
    service.on_image(truncated)
    service.on_image(frame(3, height=40, width=50))  # another size than the track's frames
    for index in (4, 5, 6):
        service.on_image(frame(index))
    seen = statuses(sink)
    assert [(s["frame_id"], s["status"]) for s in seen] == [
        ("f1", "tracking"), ("f2", "error"), ("f3", "error"), ("f4", "tracking"), ("f5", "error"), ("f6", "tracking")]
    assert seen[1]["error"].startswith("bad image: image data is truncated")
    assert seen[2]["error"].startswith("tracker rejected the frame: frame of shape (40, 50, 3)")
    assert seen[4]["error"] == "tracker returned a (49, 64) mask for a (48, 64) frame"
    assert all(s["score"] is None and s["box"] is None for s in (seen[1], seen[2], seen[4]))
    assert [square_at(m) for m in sink.of(Output.TRACK_MASK)] == [1, 4, 6]  # masks only for frames that got one
    assert [stamp_of(m) for m in sink.of(Output.TRACK_MASK)] == [frame_stamp(i) for i in (1, 4, 6)]
    assert tracker.stepped == [1, 3, 4, 5, 6]  # the undecodable frame never reached the tracker
    assert diagnostics(service, sink)["track_errors"] == "3"


def test_a_tracker_failure_ends_the_track_with_an_error_then_a_stopped_status():
    service, segmenter, sink, _ = tracking_service()
    segmenter.fake_tracker.fail_at = {2}
    seed(service, segmenter)
    for index in (1, 2, 3):
        service.on_image(frame(index))
    seen = statuses(sink)
    assert [(s["frame_id"], s["status"]) for s in seen] == [("f1", "tracking"), ("f2", "error"), (None, "stopped")]
    assert seen[1]["error"] == "tracker failed: RuntimeError: boom inside the tracker"
    assert seen[2]["reason"] == "the tracker failed on a frame: RuntimeError"
    assert segmenter.fake_tracker.stepped == [1, 2] and len(sink.results()) == 1  # no re-acquisition


def test_a_lost_track_is_reacquired_by_a_query_of_its_own():
    service, segmenter, sink, _ = tracking_service()
    segmenter.fake_tracker.lost_at = {2}
    seed(service, segmenter)
    for index in (1, 2, 3):
        service.on_image(frame(index))
    first, again = sink.results()
    assert (again["query_id"], again["query"], again["trigger"], again["origin_query_id"]) == (2, "the thing", "lost", 1)
    assert again["status"] == "ok" and again["frame_id"] == "f2"
    seen = statuses(sink)
    assert [(s["frame_id"], s["status"], s["query_id"]) for s in seen] == [
        ("f1", "tracking", 1), ("f2", "lost", 1), ("f3", "tracking", 2)]
    assert seen[1]["score"] == 0.1 and seen[1]["reason"] == "the tracker lost the target (score 0.100)"
    assert seen[2]["origin_query_id"] == 1
    lost_at = [i for i, (out, msg) in enumerate(sink.published) if out is Output.TRACK_STATUS and '"lost"' in msg.data]
    second_result = [i for i, (out, _) in enumerate(sink.published) if out is Output.RESULT][1]
    assert lost_at[0] < second_result  # the lost status comes before the re-acquisition's result
    assert segmenter.fake_tracker.started_on == [0, 2]
    values = diagnostics(service, sink)
    assert (values["track_lost"], values["track_reacquires"], values["track_query_id"]) == ("1", "1", "2")


def test_a_reacquisition_that_finds_nothing_ends_the_lost_track_with_a_stopped_status():
    service, segmenter, sink, _ = tracking_service()
    segmenter.fake_tracker.lost_at = {1}
    seed(service, segmenter)
    segmenter.behaviour = "no_box"
    service.on_image(frame(1))
    service.on_image(frame(2))
    assert [(r["trigger"], r["status"]) for r in sink.results()] == [("query", "ok"), ("lost", "no_box")]
    seen = statuses(sink)
    assert [(s["status"], s["query_id"], s["frame_id"]) for s in seen] == [("lost", 1, "f1"), ("stopped", 1, None)]
    assert seen[1]["reason"] == "query 2 found nothing to track (no_box: no box in answer)"
    assert segmenter.fake_tracker.stepped == [1] and diagnostics(service, sink)["track_state"] == "idle"


def test_without_reacquire_on_lost_the_track_goes_on_through_lost_frames():
    service, segmenter, sink, _ = tracking_service(**{"tracking.reacquire_on_lost": False})
    segmenter.fake_tracker.lost_at = {2, 3}
    seed(service, segmenter)
    for index in (1, 2, 3, 4):
        service.on_image(frame(index))
    assert len(sink.results()) == 1 and segmenter.fake_tracker.stepped == [1, 2, 3, 4]
    seen = statuses(sink)
    assert [(s["frame_id"], s["status"], s["query_id"]) for s in seen] == [
        ("f1", "tracking", 1), ("f2", "lost", 1), ("f3", "lost", 1), ("f4", "tracking", 1)]
    assert (seen[1]["score"], seen[1]["box"], seen[1]["mask_area"]) == (0.1, [2, 2, 6, 6], None)
    assert seen[1]["reason"] == "the tracker lost the target (score 0.100)" and seen[3]["reason"] is None
    assert [square_at(m) for m in sink.of(Output.TRACK_MASK)] == [1, 4]  # no mask for a lost frame
    values = diagnostics(service, sink)
    assert (values["track_state"], values["track_query_id"], values["track_frames"]) == ("tracking", "1", "2")
    assert (values["track_lost"], values["track_reacquires"]) == ("2", "0")  # lost frames, not tracks


def test_a_lost_episode_asks_for_one_reacquisition_and_no_step_runs_until_it_has_run():
    """The worker runs a waiting query before the next step, so the frames after the lost one get no step
    (and ask for nothing) until the re-acquisition has replaced or ended the track."""
    service, segmenter, sink, clock, gate = gated_service()
    tracker = segmenter.fake_tracker
    tracker.lost_at = {1, 2}
    try:
        seed(service, segmenter)
        gate.clear()
        tracker.gate = threading.Event()
        service.on_image(frame(1))
        assert tracker.stepping.wait(10)  # the step that loses the target is running
        service.on_image(frame(2))  # waiting for a step when the re-acquisition is queued
        clock.now += 1.0  # the rate limit allows a step
        tracker.gate.set()
        assert wait_until(lambda: len(segmenter.calls) == 2, 10)  # the re-acquisition runs, held by the gate
        service.on_image(frame(3))
        clock.now += 1.0
        time.sleep(0.3)
        assert tracker.stepped == [1] and diagnostics(service, sink)["track_reacquires"] == "1"
        gate.set()
        assert wait_until(lambda: len(statuses(sink)) == 2, 10)
        values = diagnostics(service, sink)
    finally:
        service.deactivate()
    assert [(r["query_id"], r["trigger"], r["frame_id"]) for r in sink.results()] == [(1, "query", "f0"),
                                                                                    (2, "lost", "f2")]
    assert [(s["frame_id"], s["status"], s["query_id"]) for s in statuses(sink)[:2]] == [
        ("f1", "lost", 1), ("f3", "tracking", 2)]
    assert tracker.started_on == [0, 2] and tracker.stepped == [1, 3]
    assert (values["track_lost"], values["track_reacquires"]) == ("1", "1")


def test_periodic_reacquisition_reruns_the_query_every_period_and_reseeds_the_track():
    service, segmenter, sink, clock = tracking_service(**{"tracking.reacquire_period_s": 1.0})
    seed(service, segmenter)
    for index in (1, 2, 3, 4):
        clock.now = T0 + index / 2
        service.on_image(frame(index))
    results = sink.results()
    assert [(r["query_id"], r["trigger"], r["origin_query_id"], r["frame_id"]) for r in results] == [
        (1, "query", 1, "f0"), (2, "period", 1, "f2"), (3, "period", 1, "f4")]
    assert segmenter.fake_tracker.stepped == [1, 3]  # frames 2 and 4 got the query's own mask instead
    assert [(s["frame_id"], s["query_id"]) for s in statuses(sink)] == [("f1", 1), ("f3", 2)]


def test_a_new_query_replaces_the_track_and_one_that_finds_nothing_ends_it():
    service, segmenter, sink, _ = tracking_service()
    seed(service, segmenter)
    service.on_image(frame(1))
    service.on_query("the other thing")
    service.on_image(frame(2))
    segmenter.behaviour = "no_box"
    service.on_query("nothing at all")
    service.on_image(frame(3))
    seen = statuses(sink)
    assert [(s["status"], s["query_id"], s["frame_id"]) for s in seen] == [
        ("tracking", 1, "f1"), ("tracking", 2, "f2"), ("stopped", 2, None)]
    assert seen[2]["reason"] == "query 3 found nothing to track (no_box: no box in answer)"
    assert segmenter.fake_tracker.stepped == [1, 2]


def test_every_instance_is_tracked_and_a_frame_is_lost_when_no_instance_is_tracked_on_it():
    clock, sink = ManualClock(T0), RecordingSink()
    segmenter = FakeSegmenter("multi")
    first, second = segmenter.fake_tracker, ShiftedTracker(segmenter.activity)
    second.lost_at, first.lost_at = {2, 3}, {3}
    opened = iter([first, second])
    params = LensParams.from_ros({"model.name": "fake", "tracking.enabled": True, "frames.max_age_s": 0.0,
                                  "tracking.reacquire_on_lost": False})
    service = LensService(params, KIT, sink, clock, image_source="/camera/image_raw", load=lambda *_: segmenter,
                          track=lambda *_: next(opened), synchronous=True)
    service.activate()
    service.on_image(frame(0))
    service.on_query("the things")
    result = segmenter.predict(marked(0), "x")
    for tracker, instance in zip((first, second), result.instances, strict=True):  # each seeded with its own mask
        assert tracker.started_on == [0] and np.array_equal(tracker.seed_masks[0], instance.mask)
    for index in (1, 2, 3, 4):
        service.on_image(frame(index))
    assert first.stepped == second.stepped == [1, 2, 3, 4]  # a lost instance is still followed
    seen = statuses(sink)
    assert [(s["status"], [i["status"] for i in s["instances"]]) for s in seen] == [
        ("tracking", ["tracking", "tracking"]), ("tracking", ["tracking", "lost"]), ("lost", ["lost", "lost"]),
        ("tracking", ["tracking", "tracking"])]
    assert (seen[0]["score"], seen[0]["box"], seen[0]["mask_area"]) == (0.7, [1, 1, 15, 5], 32)
    assert seen[1]["instances"][1] == {"status": "lost", "score": 0.1, "box": [12, 2, 16, 6], "mask_area": 0,
                                       "error": None}
    assert (seen[2]["score"], seen[2]["box"], seen[2]["mask_area"]) == (0.1, [3, 3, 17, 7], None)
    assert seen[2]["reason"] == "the tracker lost the target (score 0.100)" and seen[3]["query_id"] == 1
    assert [out for out, _ in sink.published][5:] == [*TRACK_OUTPUTS * 2, Output.TRACK_STATUS, *TRACK_OUTPUTS]
    instances = np.asarray(sink.of(Output.TRACK_INSTANCES)[0].data).reshape(48, 64)
    assert (instances[1:5, 1:5] == 1).all() and (instances[1:5, 11:15] == 2).all() and instances.sum() == 16 * 3
    assert stamp_of(sink.of(Output.TRACK_INSTANCES)[0]) == frame_stamp(1)
    detections = [[(d.id, d.results[0].hypothesis.class_id) for d in array.detections]
                  for array in sink.of(Output.TRACK_DETECTIONS)]
    both = [("1/1", "thing"), ("1/2", "other thing")]
    assert detections == [both, [("1/1", "thing")], both]
    segmenter.behaviour = "ok"
    service.on_query("the thing")  # one instance: the second tracker is stopped, the first seeded again
    assert second.stops == 1 and first.started_on == [0, 4]


def test_a_query_that_finds_no_target_ends_the_track():
    service, segmenter, sink, _ = tracking_service()
    seed(service, segmenter)
    service.on_image(frame(1))
    segmenter.behaviour = "no_target"
    service.on_query("the unicorn")
    service.on_image(frame(2))
    seen = statuses(sink)
    assert [(s["status"], s["query_id"]) for s in seen] == [("tracking", 1), ("stopped", 1)]
    assert seen[1]["reason"] == "query 2 found nothing to track (no_target: no target)"
    assert segmenter.fake_tracker.stepped == [1]


def test_stop_ends_the_track_and_a_second_stop_finds_none():
    service, segmenter, sink, _ = tracking_service()
    seed(service, segmenter)
    service.on_image(frame(1))
    assert service.stop_tracking("stop requested on /lens/track/stop") == "stopped the track of query 1"
    assert service.stop_tracking("again") == "no track was running"
    service.on_image(frame(2))
    assert [s["status"] for s in statuses(sink)] == ["tracking", "stopped"]
    assert segmenter.fake_tracker.stepped == [1] and segmenter.fake_tracker.stops == 0  # freed at the next step
    assert diagnostics(service, sink)["track_state"] == "idle"


def test_a_reacquisition_running_when_the_track_is_stopped_does_not_restart_it():
    service, segmenter, sink, _, gate = gated_service()
    tracker = segmenter.fake_tracker
    tracker.lost_at = {1}
    try:
        seed(service, segmenter)
        gate.clear()
        service.on_image(frame(1))  # lost: the re-acquisition query starts and waits at the gate
        assert wait_until(lambda: len(segmenter.calls) == 2, 10)
        service.stop_tracking("stop requested by a test")
        gate.set()
        assert wait_until(lambda: len(sink.results()) == 2, 10)
        service.on_image(frame(2))
        time.sleep(0.3)
    finally:
        service.deactivate()
    reacquisition = sink.results()[1]
    assert (reacquisition["trigger"], reacquisition["status"]) == ("lost", "ok")  # answered, as every query is
    assert tracker.started_on == [0] and tracker.stepped == [1]
    assert [(s["status"], s["reason"]) for s in statuses(sink)] == [
        ("lost", "the tracker lost the target (score 0.100)"), ("stopped", "stop requested by a test")]


def test_a_reacquisition_waiting_behind_a_new_query_is_cancelled_with_an_error_result():
    service, segmenter, sink, _ = tracking_service(synchronous=False)
    tracker = segmenter.fake_tracker
    tracker.lost_at = {1}
    try:
        seed(service, segmenter)
        tracker.gate = threading.Event()
        service.on_image(frame(1))
        assert tracker.stepping.wait(10)  # the step that loses the target is running
        service.on_query("the other thing")  # queued before the re-acquisition
        tracker.gate.set()
        assert wait_until(lambda: len(sink.results()) == 3, 10)
    finally:
        service.deactivate()
    first, other, cancelled = sink.results()
    assert (other["query"], other["status"]) == ("the other thing", "ok")
    assert (cancelled["trigger"], cancelled["origin_query_id"], cancelled["status"]) == ("lost", 1, "error")
    assert cancelled["error"] == ("re-acquisition of query 1 cancelled: its track was stopped or replaced before "
                                  "this query ran")
    assert len(segmenter.calls) == 2 and tracker.started_on == [0, 1]


def test_deactivate_ends_the_track_with_a_stopped_status():
    service, segmenter, sink, _ = tracking_service(synchronous=False)
    try:
        seed(service, segmenter)
    finally:
        service.deactivate()
    (stopped,) = statuses(sink)
    assert (stopped["status"], stopped["reason"]) == ("stopped", "node deactivated")


def test_diagnostics_report_the_track_state_rate_and_counters():
    service, segmenter, sink, clock = tracking_service()
    assert diagnostics(service, sink)["track_state"] == "idle"
    seed(service, segmenter)
    for index in (1, 2, 3):
        clock.now = T0 + index / 10
        service.on_image(frame(index))
    values = diagnostics(service, sink)
    assert (values["track_state"], values["track_query_id"], values["track_frames"]) == ("tracking", "1", "3")
    assert values["track_rate_hz"] == "1.5"  # 3 steps in the 2 s window
    assert (values["track_frames_dropped"], values["track_lost"], values["track_errors"]) == ("0", "0", "0")
    assert float(values["last_track_step_ms"]) >= 0
    clock.now += 5.0
    assert diagnostics(service, sink)["track_rate_hz"] == "0.0"


def test_a_stop_while_a_reacquisition_is_being_made_still_cancels_it():
    """The re-acquisition of a lost track belongs to the epoch the step started in, even if a stop comes
    between the lost status and the new query."""
    segmenter, frames, sink = FakeSegmenter(), LatestFrameBuffer(), RecordingSink()
    segmenter.fake_tracker.lost_at = {1}
    tracking: Tracking | None = None

    def new_id_meanwhile_stopped() -> int:
        tracking.stop("stop requested by a test")
        return 2

    params = LensParams.from_ros({"tracking.enabled": True})
    tracking = Tracking(TrackerPool(segmenter.fake_tracker, segmenter.tracker), params, frames,
                        TrackPublisher(KIT, sink), NodeStats(), ManualClock(), new_id_meanwhile_stopped,
                        rate_limited=False)
    frames.put(Frame.from_msg(frame(0), compressed=False, received_s=0.0))
    seed_frame = frames.take_latest()
    query = Query(1, "the thing", 0.0)
    tracking.after_query(query, QueryOutcome(1, "the thing", "ok", frame=seed_frame,
                                             result=segmenter.predict(marked(0), "the thing")), marked(0))
    frames.put(Frame.from_msg(frame(1), compressed=False, received_s=0.0))
    _, reacquisition = tracking.step()
    assert [s["status"] for s in statuses(sink)] == ["lost", "stopped"]
    assert reacquisition.trigger == "lost" and not tracking.wants(reacquisition)


def test_the_tracker_pool_opens_trackers_as_needed_and_no_more_than_an_answer_holds():
    segmenter = FakeSegmenter()
    opened = []

    def open_one():
        opened.append(FakeTracker(segmenter.activity))
        return opened[-1]

    pool = TrackerPool(segmenter.fake_tracker, open_one)
    hand_out = pool.take(3)
    assert [hand_out(), hand_out(), hand_out()] == [segmenter.fake_tracker, *opened] and len(opened) == 2
    pool.take(2)
    assert len(opened) == 2  # kept for later queries, none opened again
    with pytest.raises(ValueError, match="33 instances, more than the 32"):
        pool.take(33)
