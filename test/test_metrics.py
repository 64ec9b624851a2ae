"""The evaluation meter against hand-computed cases (the IoUs themselves: test_iou.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.iou import box_iou
from training.metrics import SegmentationMeter


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows])


coordinates = st.floats(-100, 100, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(
    st.tuples(coordinates, coordinates, coordinates, coordinates),
    st.tuples(coordinates, coordinates, coordinates, coordinates),
)
def test_box_iou_is_symmetric_and_bounded(a: tuple, b: tuple) -> None:
    value = box_iou(a, b)
    assert 0.0 <= value <= 1.0 + 1e-12
    assert value == pytest.approx(box_iou(b, a))


def test_meter_giou_ciou_boxes_and_generation_by_hand() -> None:
    meter = SegmentationMeter()
    assert meter.add_mask("a", _mask(["#.", ".."]), _mask(["##", ".."])) == 0.5  # I=1, U=2
    assert meter.add_mask("b", _mask(["###", "#.."]), _mask(["###", "..."])) == 0.75  # I=3, U=4
    meter.add_mask("c", np.zeros((2, 2), bool), np.zeros((2, 2), bool))  # I=0, U=0 -> 1.0
    meter.add_box("a", (0, 0, 2, 2), (0, 0, 2, 2))
    meter.add_box("b", (0, 0, 2, 2), (1, 0, 3, 2))
    meter.add_box("c", None, (0, 0, 1, 1))
    meter.add_box("d", (0, 0, 2, 1), (0, 0, 2, 2))  # exactly 0.5 counts as a hit
    meter.add_generation("a", parsed=True, num_tokens=10)
    meter.add_generation("b", parsed=False, num_tokens=30)
    summary = meter.summary()
    assert summary["num_expressions"] == 3
    assert summary["gIoU"] == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    assert summary["cIoU"] == pytest.approx(4 / 6)
    assert summary["box_iou"] == pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4)
    assert summary["box_accuracy"] == 0.5
    assert summary["parse_failure_rate"] == 0.5 and summary["mean_generated_tokens"] == 20.0


def test_meter_with_only_empty_pairs_and_with_nothing() -> None:
    meter = SegmentationMeter()
    assert all(meter.summary()[k] is None for k in ("gIoU", "cIoU", "box_iou", "box_accuracy", "parse_failure_rate"))
    meter.add_mask("x", np.zeros((2, 2), bool), np.zeros((2, 2), bool))
    assert meter.summary()["gIoU"] == 1.0 and meter.summary()["cIoU"] == 1.0


def test_meter_refuses_duplicates_and_resumes_from_json() -> None:
    meter = SegmentationMeter(box_threshold=0.7)
    meter.add_mask("a", _mask(["#."]), _mask(["##"]))
    meter.add_box("a", (0, 0, 1, 1), (0, 0, 1, 1))
    meter.add_generation("a", True, 5)
    with pytest.raises(ValueError, match="already scored"):
        meter.add_mask("a", _mask(["#."]), _mask(["##"]))
    restored = SegmentationMeter.from_dict(json.loads(json.dumps(meter.to_dict())))
    assert restored == meter and "a" in restored and "b" not in restored and len(restored) == 1
    restored.add_mask("b", _mask(["##"]), _mask(["##"]))
    assert restored.summary()["gIoU"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="not a saved"):
        SegmentationMeter.from_dict({"masks": {}})


def test_meters_from_several_shards_merge() -> None:
    first, second = SegmentationMeter(), SegmentationMeter()
    first.add_mask("a", _mask(["#."]), _mask(["##"]))
    second.add_mask("b", _mask(["##"]), _mask(["##"]))
    first.merge(second)
    assert first.summary()["cIoU"] == pytest.approx(3 / 4)
    third = SegmentationMeter()
    third.add_box("c", (0, 0, 1, 1), (0, 0, 1, 1))
    third.add_mask("b", _mask(["#."]), _mask(["#."]))
    with pytest.raises(ValueError, match="already scored"):
        first.merge(third)
    assert "c" not in first.boxes  # a refused merge changes nothing


def test_metrics_per_group_are_the_summaries_of_each_groups_samples() -> None:
    meter = SegmentationMeter()
    for sample_id, pred, label in (("a", ["#."], "short"), ("b", ["##"], "long"), ("c", [".."], "short")):
        meter.add_mask(sample_id, _mask(pred), _mask(["##"]))
        meter.add_box(sample_id, (0, 0, 2, 1) if label == "long" else None, (0, 0, 2, 1))
        meter.add_group(sample_id, label)
    by_group = meter.summary_by_group()
    assert list(by_group) == ["long", "short"]
    assert by_group["short"]["num_expressions"] == 2 and by_group["short"]["gIoU"] == pytest.approx(0.25)
    assert by_group["long"]["gIoU"] == 1.0 and by_group["long"]["box_accuracy"] == 1.0
    assert by_group["short"]["box_accuracy"] == 0.0
    assert meter.summary()["gIoU"] == pytest.approx(1.5 / 3)  # the whole split is unchanged
    with pytest.raises(ValueError, match="already scored"):
        meter.add_group("a", "long")
    restored = SegmentationMeter.from_dict(json.loads(json.dumps(meter.to_dict())))
    assert restored.summary_by_group() == by_group
    other = SegmentationMeter()
    other.add_mask("d", _mask(["##"]), _mask(["##"]))
    other.add_group("d", "short")
    restored.merge(other)
    assert restored.summary_by_group()["short"]["num_expressions"] == 3


def test_meters_saved_before_groups_existed_still_load() -> None:
    meter = SegmentationMeter()
    meter.add_mask("a", _mask(["#."]), _mask(["##"]))
    saved = meter.to_dict()
    del saved["groups"]
    assert SegmentationMeter.from_dict(saved) == meter and meter.summary_by_group() == {}


def test_n_acc_t_acc_giou_and_ciou_with_no_target_expressions_by_hand() -> None:
    """GRES/ReLA: "nothing" is scored as an empty mask, so a correct one scores 1.0 in gIoU and adds nothing to
    cIoU's sums; N-acc and T-acc count the expressions answered right about whether something is there."""
    empty = np.zeros((2, 5), bool)
    meter = SegmentationMeter()
    meter.add_mask("nt-right", empty, empty)  # I=0, U=0 -> 1.0
    meter.add_presence("nt-right", has_target=False, answered=False)
    meter.add_mask("nt-wrong", _mask(["##...", "....."]), empty)  # I=0, U=2 -> 0.0
    meter.add_presence("nt-wrong", has_target=False, answered=True)
    meter.add_mask("t-missed", empty, _mask(["###..", "....."]))  # I=0, U=3 -> 0.0
    meter.add_presence("t-missed", has_target=True, answered=False)
    meter.add_mask("t-found", _mask(["####.", "....."]), _mask(["###..", "#...."]))  # I=3, U=5 -> 0.6
    meter.add_presence("t-found", has_target=True, answered=True)
    summary = meter.summary()
    assert summary["gIoU"] == pytest.approx((1.0 + 0.0 + 0.0 + 0.6) / 4)
    assert summary["cIoU"] == pytest.approx((0 + 0 + 0 + 3) / (0 + 2 + 3 + 5))
    assert (summary["num_no_target"], summary["N_acc"], summary["T_acc"]) == (2, 0.5, 0.5)
    restored = SegmentationMeter.from_dict(json.loads(json.dumps(meter.to_dict())))
    assert restored == meter and restored.subset(["nt-right", "t-found"]).summary()["N_acc"] == 1.0
    other = SegmentationMeter()
    other.add_presence("nt-right", has_target=False, answered=False)
    with pytest.raises(ValueError, match="presence of sample 'nt-right' was already scored"):
        meter.merge(other)


def test_without_presence_records_n_acc_and_t_acc_are_none() -> None:
    meter = SegmentationMeter()
    meter.add_mask("a", _mask(["#."]), _mask(["##"]))
    summary = meter.summary()
    assert (summary["num_no_target"], summary["N_acc"], summary["T_acc"]) == (0, None, None)
