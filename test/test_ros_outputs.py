"""What one query publishes: result JSON schema, output set and order, stamps, debug image rate limit."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ros_fixtures import KIT, FakeSegmenter, ManualClock, RecordingSink, image_msg, make_service, pattern_image

from lens_ros.core.outcome import QueryOutcome
from lens_ros.core.publishing import OutcomePublisher, Output, RateLimiter

NULLABLE = type(None)
RESULT_SCHEMA = {
    "schema": (str,), "query_id": (int,), "query": (str,), "trigger": (str,), "origin_query_id": (int,),
    "status": (str,), "error": (str, NULLABLE),
    "stamp": (dict, NULLABLE), "frame_id": (str, NULLABLE), "frame_age_s": (float, NULLABLE), "instances": (list,),
    "box": (list, NULLABLE), "box_status": (str, NULLABLE), "score": (float, NULLABLE), "label": (str, NULLABLE),
    "reasoning": (str, NULLABLE), "answer": (str, NULLABLE), "mask_area": (int, NULLABLE),
    "random_weights": (bool, NULLABLE), "timings_ms": (dict,),
}


def run_queries(behaviours: list[str], **overrides):
    clock, sink = ManualClock(1000.0), RecordingSink()
    segmenter = FakeSegmenter()
    service = make_service(segmenter, clock, sink, synchronous=True, **overrides)
    service.activate()
    service.on_image(image_msg(pattern_image(), "rgb8", 999.75, frame_id="optical"))
    for behaviour in behaviours:
        segmenter.behaviour = behaviour
        service.on_query(f"find it ({behaviour})")
    return sink, clock, service


def check_schema(result: dict) -> None:
    assert set(result) == set(RESULT_SCHEMA)
    for key, types in RESULT_SCHEMA.items():
        assert isinstance(result[key], types), (key, result[key])
    assert result["schema"] == "lens_ros/result/3"
    assert all(isinstance(v, float) for v in result["timings_ms"].values())


def test_result_json_schema_for_ok_no_box_and_error():
    sink, _, _ = run_queries(["ok", "no_box", "raise", "no_target"])
    ok, no_box, error, no_target = sink.results()
    for result in (ok, no_box, error, no_target):
        check_schema(result)
    assert ok["instances"] == [{"box": [0.0, 0.0, 32.0, 24.0], "score": 0.75, "label": "thing", "mask_area": 768}]
    assert no_box["instances"] == [] and error["instances"] == []
    assert (no_target["status"], no_target["instances"], no_target["box"]) == ("no_target", [], None)
    assert ok["status"] == "ok" and ok["error"] is None
    assert ok["box"] == [0.0, 0.0, 32.0, 24.0] and ok["label"] == "thing" and ok["score"] == 0.75
    assert ok["reasoning"] == "it is there" and ok["mask_area"] == 32 * 24
    assert ok["stamp"] == {"sec": 999, "nanosec": 750000000} and ok["frame_id"] == "optical"
    assert {"queue_wait", "decode", "generate", "mask_decoder", "node_total"} <= set(ok["timings_ms"])
    assert no_box["status"] == "no_box" and no_box["box"] is None and no_box["box_status"] == "no box in answer"
    assert error["status"] == "error" and error["box"] is None and "boom" in error["error"]
    assert [r["query_id"] for r in (ok, no_box, error)] == [1, 2, 3]
    assert [(r["trigger"], r["origin_query_id"]) for r in (ok, no_box, error)] == [("query", 1), ("query", 2),
                                                                                   ("query", 3)]


FRAME_OUTPUTS = [Output.MASK, Output.INSTANCES, Output.DETECTIONS, Output.REASONING, Output.RESULT]


def pixels(image_msg) -> np.ndarray:
    return np.asarray(image_msg.data, np.uint8).reshape(image_msg.height, image_msg.width)


def test_ok_publishes_mask_instances_detections_reasoning_then_result_all_with_the_frame_header():
    sink, _, _ = run_queries(["ok"])
    assert [out for out, _ in sink.published] == FRAME_OUTPUTS
    mask, instances, detections = sink.of(Output.MASK)[0], sink.of(Output.INSTANCES)[0], sink.of(Output.DETECTIONS)[0]
    for header in (mask.header, instances.header, detections.header, detections.detections[0].header):
        assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (999, 750000000, "optical")
    assert (mask.encoding, mask.height, mask.width) == ("mono8", 48, 64)
    assert (instances.encoding, instances.height, instances.width) == ("mono8", 48, 64)
    assert np.array_equal(pixels(instances), (pixels(mask) > 0).astype(np.uint8))
    assert [detection.id for detection in detections.detections] == ["1/1"]
    assert sink.of(Output.REASONING)[0].data == "it is there"


def test_every_instance_gets_a_detection_and_its_number_on_the_instance_image():
    sink, _, _ = run_queries(["multi"])
    assert [out for out, _ in sink.published] == FRAME_OUTPUTS
    instances = pixels(sink.of(Output.INSTANCES)[0])
    assert (instances[:24, :32] == 1).all() and (instances[24:, 32:] == 2).all() and instances.sum() == 768 * 3
    assert np.array_equal(pixels(sink.of(Output.MASK)[0]) > 0, instances > 0)  # the mask is their union
    detections = sink.of(Output.DETECTIONS)[0].detections
    assert [(d.id, d.results[0].hypothesis.class_id, d.bbox.center.position.x) for d in detections] == [
        ("1/1", "thing", 16.0), ("1/2", "other thing", 48.0)]
    (result,) = sink.results()
    assert [instance["label"] for instance in result["instances"]] == ["thing", "other thing"]
    assert result["mask_area"] == 2 * 768 and result["label"] == "thing"


@pytest.mark.parametrize("behaviour", ["no_box", "no_target"])
def test_no_box_and_no_target_publish_empty_detections_and_instances(behaviour):
    sink, _, _ = run_queries([behaviour])
    assert [out for out, _ in sink.published] == FRAME_OUTPUTS
    assert sink.of(Output.DETECTIONS)[0].detections == []
    assert not pixels(sink.of(Output.INSTANCES)[0]).any() and pixels(sink.of(Output.MASK)[0]).shape == (48, 64)
    assert not pixels(sink.of(Output.MASK)[0]).any()
    assert sink.results()[0]["status"] == behaviour


def test_no_target_publishes_an_empty_mask_whatever_mask_the_model_gave():
    """The node's promise to a consumer waiting on the mask: no_target is all zeros."""
    clock, sink = ManualClock(1000.0), RecordingSink()
    segmenter = FakeSegmenter("no_target")
    predict = segmenter.predict

    def with_a_stray_mask(image, query, **options):
        result = predict(image, query, **options)
        result.mask[:10, :10] = True
        return result

    segmenter.predict = with_a_stray_mask
    service = make_service(segmenter, clock, sink, synchronous=True)
    service.activate()
    service.on_image(image_msg(pattern_image(), "rgb8", 999.75))
    service.on_query("the unicorn")
    assert not pixels(sink.of(Output.MASK)[0]).any() and sink.results()[0]["status"] == "no_target"


def test_errors_publish_only_the_result():
    sink, _, _ = run_queries(["raise", "oom"])
    assert [out for out, _ in sink.published] == [Output.RESULT, Output.RESULT]


def test_debug_image_is_off_by_default_and_rate_limited_when_on():
    sink, _, _ = run_queries(["ok", "ok"])
    assert sink.of(Output.DEBUG_IMAGE) == []
    sink, clock, service = run_queries(["ok", "ok"], **{"debug_image.enabled": True, "debug_image.max_rate_hz": 2.0})
    assert len(sink.of(Output.DEBUG_IMAGE)) == 1  # two queries at the same instant
    clock.now += 0.6
    service.on_query("later")
    debug = sink.of(Output.DEBUG_IMAGE)
    assert len(debug) == 2
    overlay = np.asarray(debug[0].data).reshape(48, 64, 3)
    assert debug[0].encoding == "rgb8" and debug[0].header.frame_id == "optical"
    original = pattern_image()
    assert not np.array_equal(overlay[5:20, 5:25], original[5:20, 5:25])  # tinted inside the mask
    np.testing.assert_array_equal(overlay[44:, 40:], original[44:, 40:])  # untouched below the box caption


def test_rate_limiter_allows_one_event_per_period():
    clock = ManualClock(0.0)
    limiter = RateLimiter(4.0, clock)
    allowed = []
    for step in range(10):
        clock.now = step * 0.1
        allowed.append(limiter.allow())
    assert allowed == [True, False, False, True, False, False, True, False, False, True]


@pytest.mark.parametrize("field, value, error", [("box", (0.0, 0.0, "wide", 1.0), "ValueError"),
                                                  ("label", object(), "TypeError")])
def test_unbuildable_outputs_turn_into_an_error_result(field, value, error):
    sink, _, service = run_queries(["ok"])
    outcome = QueryOutcome(9, "x", "ok", frame=service.frames.peek(), result=FakeSegmenter().predict(
        pattern_image(), "x"))
    setattr(outcome.result.instances[0], field, value)
    before = len(sink.published)
    published = OutcomePublisher(KIT, sink, None).publish(outcome)
    result = json.loads(sink.of(Output.RESULT)[-1].data)
    assert published.status == "error" and result["status"] == "error"
    assert result["error"].startswith(f"cannot build output messages: {error}")
    assert [out for out, _ in sink.published[before:]] == [Output.RESULT]  # no half-built outputs


@pytest.mark.parametrize("data", ["", b"\xff\xfe", "x" * 5000])
def test_rejected_query_text_still_gets_exactly_one_result(data):
    clock, sink = ManualClock(), RecordingSink()
    service = make_service(FakeSegmenter(), clock, sink, synchronous=True)
    service.activate()
    service.on_query(data)
    (result,) = sink.results()
    check_schema(result)
    assert result["status"] == "error" and result["stamp"] is None
