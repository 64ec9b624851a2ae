"""Intersection over union: the one implementation behind the GRPO rewards, the losses' train IoU
and the evaluation metrics.

- Masks are compared at the ground truth's resolution; the ground truth is binarised (any nonzero
  pixel is target) and ``ignore`` pixels are left out of both intersection and union. An empty
  prediction on an empty ground truth (nothing to find, nothing predicted) has IoU 1.
- ``histogram_intersection_union`` counts as the authors' evaluation did (``--protocol paper``,
  ``training.protocol``): ground-truth values other than 0, 1 and 255 are neither target nor ignored.
- A box is (x1, y1, x2, y2); a missing, non-finite or degenerate box has IoU 0, never a division by zero.
- ``match_boxes`` pairs predicted and ground-truth boxes one to one with the largest total IoU
  (the Hungarian method, ``max_weight_assignment``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def mask_intersection_union(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    ignore: np.ndarray | torch.Tensor | None = None,
) -> tuple[int, int]:
    """(intersection, union) pixel counts. ``pred`` must be a mask (bool or integer), not logits."""
    pred, gt = _as_numpy(pred), _as_numpy(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction {pred.shape} and ground truth {gt.shape} differ in shape; resize the "
            "prediction to the ground truth's original resolution first (lens_model.sam_head.upsample_logits)"
        )
    if np.issubdtype(pred.dtype, np.floating):
        raise TypeError(
            f"prediction must be a mask, got {pred.dtype} values; threshold logits first (logits > 0)"
        )
    pred, gt = pred != 0, gt != 0
    if ignore is not None:
        ignore = _as_numpy(ignore)
        if ignore.shape != gt.shape:
            raise ValueError(f"ignore {ignore.shape} and ground truth {gt.shape} differ in shape")
        keep = ignore == 0
        pred, gt = pred & keep, gt & keep
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def histogram_intersection_union(pred: np.ndarray | torch.Tensor, gt_values: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """Foreground (intersection, union) as LISA's ``intersectionAndUnionGPU(pred, gt, 2, ignore_index=255)``
    counts them, which the authors' evaluation used on unbinarised ground truth.

    ``gt_values`` holds per-pixel values: 1 is target, 255 is ignored (the prediction there too), and
    any other value (2 where two summed polygons overlap) falls outside the histogram: it is neither
    target nor intersection, but a predicted pixel there still counts in the union.
    """
    pred, gt = _as_numpy(pred) != 0, _as_numpy(gt_values)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    kept = gt != 255
    predicted = pred & kept
    intersection = int(np.count_nonzero(predicted & (gt == 1)))
    return intersection, int(np.count_nonzero(predicted)) + int(np.count_nonzero(gt == 1)) - intersection


def expression_iou(intersection: int, union: int) -> float:
    """I / U, with an empty prediction on an empty ground truth (U = 0) counting as a perfect 1.0."""
    return 1.0 if union == 0 else intersection / union


def mask_iou(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor,
             ignore: np.ndarray | torch.Tensor | None = None) -> float:
    """The IoU of a predicted mask (bool or integer, not logits) with the ground truth."""
    return expression_iou(*mask_intersection_union(pred, gt, ignore))


def box_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """IoU of two (x1, y1, x2, y2) boxes; 0.0 when either is missing, non-finite or degenerate."""
    first, second = _valid_box(a), _valid_box(b)
    if first is None or second is None:
        return 0.0
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    intersection = max(width, 0.0) * max(height, 0.0)
    union = _area(first) + _area(second) - intersection
    if not math.isfinite(union) or union <= 0:
        return 0.0
    return intersection / union


def _valid_box(box: Sequence[float] | None) -> tuple[float, float, float, float] | None:
    if box is None:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def _area(box: tuple[float, float, float, float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def max_weight_assignment(weights: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """The one-to-one (row, column) pairs of largest total weight, min(rows, columns) of them.

    The Hungarian method with potentials (Kuhn-Munkres, O(n² m)); answers hold at most 32 boxes,
    so plain Python is fast enough and scipy's solver is not needed as a dependency."""
    rows, cols = len(weights), len(weights[0]) if weights else 0
    if rows == 0 or cols == 0:
        return []
    if rows > cols:
        return sorted((i, j) for j, i in max_weight_assignment([list(col) for col in zip(*weights)]))
    cost = [[-float(w) for w in row] for row in weights]  # minimise the negated weights
    row_potential = [0.0] * (rows + 1)
    col_potential = [0.0] * (cols + 1)
    row_of_col = [0] * (cols + 1)  # 1-based row assigned to each column; column 0 is the free start
    for row in range(1, rows + 1):
        row_of_col[0] = row
        slack = [math.inf] * (cols + 1)
        previous_col = [0] * (cols + 1)
        used = [False] * (cols + 1)
        col = 0
        while row_of_col[col]:
            used[col] = True
            current_row, delta, next_col = row_of_col[col], math.inf, 0
            for j in range(1, cols + 1):
                if not used[j]:
                    reduced = cost[current_row - 1][j - 1] - row_potential[current_row] - col_potential[j]
                    if reduced < slack[j]:
                        slack[j], previous_col[j] = reduced, col
                    if slack[j] < delta:
                        delta, next_col = slack[j], j
            for j in range(cols + 1):
                if used[j]:
                    row_potential[row_of_col[j]] += delta
                    col_potential[j] -= delta
                else:
                    slack[j] -= delta
            col = next_col
        while col:  # flip the augmenting path
            row_of_col[col] = row_of_col[previous_col[col]]
            col = previous_col[col]
    return sorted((row_of_col[j] - 1, j - 1) for j in range(1, cols + 1) if row_of_col[j])


def match_boxes(pred: Sequence[Sequence[float]], gt: Sequence[Sequence[float]]) -> list[tuple[int, int, float]]:
    """One-to-one (pred index, gt index, IoU) pairs of the largest total IoU, in pred order; pairs of
    IoU 0 are left unmatched (a box that overlaps nothing matches nothing)."""
    ious = [[box_iou(p, g) for g in gt] for p in pred]
    return [(i, j, ious[i][j]) for i, j in max_weight_assignment(ious) if ious[i][j] > 0]
