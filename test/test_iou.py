"""The one IoU implementation: masks at the ground truth's resolution, ignore pixels, boxes."""
import math

import numpy as np
import pytest
import torch

from training.iou import box_iou, expression_iou, mask_intersection_union, match_boxes


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows])


def test_mask_iou_by_hand() -> None:
    pred = _mask(["##..", "##..", "...."])
    gt = _mask([".##.", ".##.", "...."])
    assert mask_intersection_union(pred, gt) == (2, 6)
    assert mask_intersection_union(torch.from_numpy(pred), torch.from_numpy(gt)) == (2, 6)


def test_empty_prediction_on_empty_ground_truth_scores_one() -> None:
    empty = np.zeros((3, 3), bool)
    assert mask_intersection_union(empty, empty) == (0, 0)
    assert expression_iou(0, 0) == 1.0
    assert expression_iou(*mask_intersection_union(_mask(["#..", "...", "..."]), empty)) == 0.0


def test_ground_truth_is_binarised() -> None:
    pred = _mask(["##", "##"])
    summed_polygons = np.array([[1, 2], [0, 0]], np.uint8)  # overlapping polygons summed, as LENS's eval did
    assert mask_intersection_union(pred, summed_polygons) == (2, 4)


def test_ignore_pixels_leave_both_intersection_and_union() -> None:
    pred = _mask(["###.", "...."])
    gt = _mask(["#..#", "#..."])
    ignore = _mask(["..#.", "#..."])
    assert mask_intersection_union(pred, gt) == (1, 5)
    assert mask_intersection_union(pred, gt, ignore) == (1, 3)


def test_shape_mismatch_and_logits_are_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="upsample_logits"):
        mask_intersection_union(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(TypeError, match="threshold"):
        mask_intersection_union(np.zeros((2, 2), np.float32), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="ignore"):
        mask_intersection_union(np.zeros((2, 2), bool), np.zeros((2, 2), bool), np.zeros((1, 2), bool))


def test_box_iou_by_hand_and_invalid_boxes() -> None:
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(2 / 6)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    for bad in (None, (0, 0, 0, 0), (1, 1, 0, 2), (0, 0, math.nan, 1), (0, 0, math.inf, 1), (1, 2, 3), "abcd"):
        assert box_iou(bad, (0, 0, 1, 1)) == 0.0
        assert box_iou((0, 0, 1, 1), bad) == 0.0
    assert box_iou((0, 0, 1e300, 1e300), (0, 0, 1e300, 1e300)) == 0.0  # overflowing areas, not NaN


A, B, C = (0, 0, 10, 10), (20, 0, 30, 10), (40, 0, 50, 20)


def test_match_boxes_pairs_one_to_one_by_iou() -> None:
    assert match_boxes([B, A], [A, B, C]) == [(0, 1, 1.0), (1, 0, 1.0)]
    assert match_boxes([A, A], [A]) == [(0, 0, 1.0)]  # a ground-truth box is matched once
    assert match_boxes([(20, 0, 30, 20)], [B, C]) == [(0, 0, 0.5)]
    # the best pair first (IoU 1), then the best of what is left (0.2, though 0.6 was on offer to box 0)
    matches = match_boxes([(0, 0, 10, 6), A], [A, (0, 4, 10, 10)])
    assert [(i, j) for i, j, _ in matches] == [(1, 0), (0, 1)] and matches[1][2] == pytest.approx(0.2)
    assert match_boxes([A], [C]) == [] and match_boxes([], [A]) == [] and match_boxes([A], []) == []
