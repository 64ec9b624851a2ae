"""The one IoU implementation: masks at the ground truth's resolution, ignore pixels, boxes."""
import itertools
import math

import numpy as np
import pytest
import torch

from training.iou import box_iou, expression_iou, mask_intersection_union, match_boxes, max_weight_assignment


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
    # the largest total, not the best pair first: greedy would take (0, 0) at 0.467 and leave box 1
    # unmatched; the optimum pairs 0 with 1 (5/17) and 1 with 0 (0.25), 0.544 in all
    matches = match_boxes([(13, 0, 25, 10), (0, 0, 15, 10)], [(10, 0, 20, 10), (20, 0, 30, 10)])
    assert [(i, j) for i, j, _ in matches] == [(0, 1), (1, 0)]
    assert [iou for _, _, iou in matches] == pytest.approx([5 / 17, 0.25])
    assert match_boxes([A], [C]) == [] and match_boxes([], [A]) == [] and match_boxes([A], []) == []


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 3), (2, 5), (5, 2), (6, 6)])
def test_max_weight_assignment_is_the_brute_force_optimum(rows: int, cols: int) -> None:
    rng = np.random.default_rng(rows * 10 + cols)
    for _ in range(20):
        weights = rng.random((rows, cols)).round(2).tolist()
        pairs = max_weight_assignment(weights)
        assert len(pairs) == min(rows, cols)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        if rows <= cols:
            best = max(sum(weights[i][j] for i, j in enumerate(p)) for p in itertools.permutations(range(cols), rows))
        else:
            best = max(sum(weights[i][j] for j, i in enumerate(p)) for p in itertools.permutations(range(rows), cols))
        assert sum(weights[i][j] for i, j in pairs) == pytest.approx(best)
    assert max_weight_assignment([]) == [] and max_weight_assignment([[]]) == []
