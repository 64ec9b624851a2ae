"""LensService behaviour the transports rely on at the edges of the lifecycle: stopping while a query
runs, failed activation, query ids across services, over-long queries, a kit without vision_msgs."""
from __future__ import annotations

import dataclasses
import threading

import pytest
from ros_fixtures import KIT, FakeSegmenter, ManualClock, RecordingSink, image_msg, make_service, pattern_image

from lens_ros.core.params import LensParams
from lens_ros.core.publishing import Output
from lens_ros.core.queries import QueryIds
from lens_ros.core.service import ECHOED_QUERY_CHARS, LensService
from lens_ros.core.stats import ERROR_LEVEL, lifecycle_report

PARAMS = LensParams.from_ros({"model.name": "fake"})


def serving(segmenter: FakeSegmenter, **overrides):
    clock, sink = ManualClock(), RecordingSink()
    service = make_service(segmenter, clock, sink, **{"frames.max_age_s": 0.0, **overrides})
    service.activate()
    service.on_image(image_msg(pattern_image(), "rgb8", clock.now))
    return service, sink


def test_a_query_still_running_at_deactivate_gets_one_error_result_and_its_late_result_is_dropped():
    gate = threading.Event()
    segmenter = FakeSegmenter(gate=gate)
    service, sink = serving(segmenter)
    service.on_query("the running one")
    assert segmenter.started.wait(5)
    service.on_query("the waiting one")
    assert service.deactivate(timeout_s=0.1) == 2
    gate.set()  # the model finishes after all
    results = sink.wait_for_results(3, timeout_s=1.0)
    assert [(r["query"], r["status"]) for r in results] == [("the waiting one", "error"), ("the running one", "error")]
    assert results[1]["error"] == "node deactivated or shut down while this query ran (waited 0.1 s)"
    assert sink.of(Output.MASK) == []


def test_deactivate_reports_no_queries_when_idle():
    service, _ = serving(FakeSegmenter())
    assert service.deactivate(free_memory=False) == 0


def test_a_failed_activation_is_kept_for_the_diagnostics_until_one_succeeds():
    sink = RecordingSink()
    attempts = iter([FileNotFoundError("no such folder"), FakeSegmenter()])

    def load(name: str, device: str, dtype: str) -> FakeSegmenter:
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    service = LensService(PARAMS, KIT, sink, ManualClock(),
                          image_source="/camera/image_raw", load=load)
    with pytest.raises(FileNotFoundError):
        service.activate()
    service.publish_diagnostics()
    status = sink.of(Output.DIAGNOSTICS)[-1].status[0]
    assert status.level == ERROR_LEVEL
    assert status.message == ("inactive: no model loaded; activate failed: cannot load model fake: "
                              "FileNotFoundError: no such folder")
    service.activate()
    service.publish_diagnostics()
    assert sink.of(Output.DIAGNOSTICS)[-1].status[0].message != status.message
    assert service.activation_error is None


def test_services_sharing_query_ids_continue_one_sequence():
    ids = QueryIds()
    first, second = (LensService(PARAMS, KIT,
                                 sink, ManualClock(), image_source="/camera/image_raw", ids=ids)
                     for sink in (RecordingSink(), RecordingSink()))
    first.on_query("")
    second.on_query("")
    assert ids.next() == 3


def test_an_over_long_query_is_echoed_only_in_part():
    service, sink = serving(FakeSegmenter(), **{"queries.max_length": 10})
    service.on_query("y" * 100_000)
    result, = sink.wait_for_results(1)
    assert result["query"] == "y" * ECHOED_QUERY_CHARS + "..."
    assert result["error"] == (f"query is 100000 characters long; the limit is 10 (queries.max_length) "
                               f"(the result's query field holds its first {ECHOED_QUERY_CHARS} characters)")


def test_a_short_rejected_query_is_echoed_whole():
    service, sink = serving(FakeSegmenter(), **{"queries.max_length": 10})
    service.on_query("z" * 11)
    assert sink.wait_for_results(1)[0]["query"] == "z" * 11


def test_without_vision_msgs_a_query_publishes_everything_but_detections():
    no_vision = dataclasses.replace(KIT, **{name: None for name in (
        "Point2D", "Pose2D", "BoundingBox2D", "ObjectHypothesis", "ObjectHypothesisWithPose", "Detection2D",
        "Detection2DArray")})
    clock, sink = ManualClock(), RecordingSink()
    service = LensService(PARAMS, no_vision, sink, clock,
                          image_source="/camera/image_raw", load=lambda *_: FakeSegmenter())
    service.activate()
    service.on_image(image_msg(pattern_image(), "rgb8", clock.now))
    service.on_query("the thing")
    assert sink.wait_for_results(1)[0]["status"] == "ok"
    service.deactivate()
    assert [out for out, _ in sink.published if out is not Output.DIAGNOSTICS] == [
        Output.MASK, Output.INSTANCES, Output.REASONING, Output.RESULT]


def test_lifecycle_report_says_why_there_is_no_model():
    report = lifecycle_report("lens_node: segmentation", "unconfigured", "configure failed: bad topic")
    assert (report.level, report.message) == (ERROR_LEVEL, "unconfigured: no model loaded; configure failed: bad topic")
    assert report.values == (("state", "unconfigured"),)
