"""Evaluation metrics for referring segmentation and grounding.

- Mask IoU at the ground truth's original resolution; the ground truth is binarised (any nonzero
  pixel is target) and ``ignore`` pixels are left out of both intersection and union.
- gIoU: mean over expressions of I/U, an empty prediction on an empty ground truth scoring 1.0.
- cIoU: cumulative sum(I) / sum(U) over all expressions.
- Box IoU (0 for an invalid or degenerate box, never a division by zero) and accuracy at IoU >= 0.5.
- Generation statistics: answer parse-failure rate and mean generated length in tokens.

``histogram_iou`` counts as the authors' evaluation did (``--protocol paper``, see
``training.protocol``): ground-truth values other than 0, 1 and 255 are neither target nor ignored.

``SegmentationMeter`` keeps per-expression counts keyed by sample id, refuses to score an id twice
(padding duplicates from distributed samplers would otherwise bias the result) and round-trips
through ``to_dict``/``from_dict`` so an interrupted evaluation can be saved and resumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MeterValue = float | int | None
FORMAT = "segmentation-meter/1"


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def mask_iou(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    ignore: np.ndarray | torch.Tensor | None = None,
) -> tuple[int, int]:
    """(intersection, union) pixel counts. ``pred`` must be a mask (bool or integer), not logits."""
    pred, gt = _as_numpy(pred), _as_numpy(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction {pred.shape} and ground truth {gt.shape} differ in shape; resize the "
            "prediction to the ground truth's original resolution first (prediction_to_mask)"
        )
    if np.issubdtype(pred.dtype, np.floating):
        raise TypeError(
            f"prediction must be a mask, got {pred.dtype} values; threshold logits first (prediction_to_mask)"
        )
    pred, gt = pred != 0, gt != 0
    if ignore is not None:
        ignore = _as_numpy(ignore)
        if ignore.shape != gt.shape:
            raise ValueError(f"ignore {ignore.shape} and ground truth {gt.shape} differ in shape")
        keep = ignore == 0
        pred, gt = pred & keep, gt & keep
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def histogram_iou(pred: np.ndarray | torch.Tensor, gt_values: np.ndarray | torch.Tensor) -> tuple[int, int]:
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


def prediction_to_mask(
    prediction: np.ndarray | torch.Tensor, size: tuple[int, int], threshold: float = 0.0
) -> np.ndarray:
    """A 2-D prediction resized to ``size`` (H, W) as a bool mask.

    Float input is read as logits: bilinear upsampling (align_corners=False, as LENS does) then
    ``> threshold``. Bool or integer input is a mask and is resized with nearest-exact sampling.
    """
    tensor = torch.as_tensor(prediction).detach().cpu()
    if tensor.dim() != 2:
        raise ValueError(f"prediction must be 2-D (H, W), got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        resized = F.interpolate(tensor[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
        return (resized > threshold).numpy()
    resized = F.interpolate((tensor != 0)[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    return (resized > 0.5).numpy()


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


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class SegmentationMeter:
    """Accumulates mask, box and generation results per sample id; ``summary()`` gives the metrics."""

    box_threshold: float = 0.5
    masks: dict[str, tuple[int, int]] = field(default_factory=dict)
    boxes: dict[str, float] = field(default_factory=dict)
    generations: dict[str, tuple[bool, int]] = field(default_factory=dict)
    # Optional subset label per sample (ReasonSeg short/long query, synthetic expression type ...).
    groups: dict[str, str] = field(default_factory=dict)

    def add_mask(
        self,
        sample_id: str,
        pred: np.ndarray | torch.Tensor,
        gt: np.ndarray | torch.Tensor,
        ignore: np.ndarray | torch.Tensor | None = None,
    ) -> float:
        """Score one expression's predicted mask; returns its IoU."""
        return self.add_counts(sample_id, *mask_iou(pred, gt, ignore))

    def add_counts(self, sample_id: str, intersection: int, union: int) -> float:
        """Score one expression from its pixel counts (as another protocol counted them); returns its IoU."""
        _check_new(sample_id, self.masks, "mask")
        self.masks[sample_id] = (int(intersection), int(union))
        return expression_iou(*self.masks[sample_id])

    def add_box(self, sample_id: str, pred_box: Sequence[float] | None, gt_box: Sequence[float]) -> float:
        """Score one predicted box (None when the answer held none); returns its IoU."""
        _check_new(sample_id, self.boxes, "box")
        self.boxes[sample_id] = box_iou(pred_box, gt_box)
        return self.boxes[sample_id]

    def add_generation(self, sample_id: str, parsed: bool, num_tokens: int) -> None:
        _check_new(sample_id, self.generations, "generation")
        self.generations[sample_id] = (bool(parsed), int(num_tokens))

    def add_group(self, sample_id: str, label: str) -> None:
        _check_new(sample_id, self.groups, "group")
        self.groups[sample_id] = str(label)

    def __contains__(self, sample_id: str) -> bool:
        """Whether this sample's mask was already scored (to skip it when resuming)."""
        return sample_id in self.masks

    def __len__(self) -> int:
        return len(self.masks)

    def merge(self, other: SegmentationMeter) -> None:
        """Add another meter's results (e.g. another rank's shard); overlapping ids are an error."""
        if other.box_threshold != self.box_threshold:
            raise ValueError(f"box thresholds differ: {self.box_threshold} vs {other.box_threshold}")
        pairs: tuple[tuple[dict[str, Any], dict[str, Any], str], ...] = (
            (self.masks, other.masks, "mask"),
            (self.boxes, other.boxes, "box"),
            (self.generations, other.generations, "generation"),
            (self.groups, other.groups, "group"),
        )
        for mine, theirs, kind in pairs:  # check everything first so a refused merge changes nothing
            for sample_id in theirs:
                _check_new(sample_id, mine, kind)
        self.masks.update(other.masks)
        self.boxes.update(other.boxes)
        self.generations.update(other.generations)
        self.groups.update(other.groups)

    def summary(self) -> dict[str, MeterValue]:
        """gIoU, cIoU, box IoU and accuracy as fractions in [0, 1]; None where nothing was scored."""
        intersections = sum(i for i, _ in self.masks.values())
        unions = sum(u for _, u in self.masks.values())
        box_ious = list(self.boxes.values())
        return {
            "num_expressions": len(self.masks),
            "gIoU": _mean([expression_iou(i, u) for i, u in self.masks.values()]),
            "cIoU": expression_iou(intersections, unions) if self.masks else None,
            "num_boxes": len(box_ious),
            "box_iou": _mean(box_ious),
            "box_accuracy": _mean([float(v >= self.box_threshold) for v in box_ious]),
            "num_generations": len(self.generations),
            "parse_failure_rate": _mean([float(not parsed) for parsed, _ in self.generations.values()]),
            "mean_generated_tokens": _mean([float(tokens) for _, tokens in self.generations.values()]),
        }

    def subset(self, sample_ids: Iterable[str]) -> SegmentationMeter:
        """A meter holding only these samples' results."""
        keep = set(sample_ids)

        def pick(scored: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in scored.items() if k in keep}

        return SegmentationMeter(self.box_threshold, pick(self.masks), pick(self.boxes), pick(self.generations),
                                 pick(self.groups))

    def summary_by_group(self) -> dict[str, dict[str, MeterValue]]:
        """``summary()`` of each group label's samples, labels sorted; empty when nothing is grouped."""
        members: dict[str, list[str]] = {}
        for sample_id, label in self.groups.items():
            members.setdefault(label, []).append(sample_id)
        return {label: self.subset(members[label]).summary() for label in sorted(members)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "format": FORMAT,
            "box_threshold": self.box_threshold,
            "masks": {k: list(v) for k, v in self.masks.items()},
            "boxes": dict(self.boxes),
            "generations": {k: list(v) for k, v in self.generations.items()},
            "groups": dict(self.groups),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationMeter:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a saved SegmentationMeter (format {data.get('format')!r}, expected {FORMAT!r})")
        return cls(
            box_threshold=float(data["box_threshold"]),
            masks={k: (int(i), int(u)) for k, (i, u) in data["masks"].items()},
            boxes={k: float(v) for k, v in data["boxes"].items()},
            generations={k: (bool(p), int(n)) for k, (p, n) in data["generations"].items()},
            groups={k: str(v) for k, v in data.get("groups", {}).items()},  # absent in files of older versions
        )


def _check_new(sample_id: str, scored: dict[str, Any], kind: str) -> None:
    if sample_id in scored:
        raise ValueError(f"{kind} of sample {sample_id!r} was already scored")
