"""Evaluation metrics for referring segmentation and grounding (the IoUs themselves: ``training.iou``).

- gIoU: mean over expressions of I/U, an empty prediction on an empty ground truth scoring 1.0.
- cIoU: cumulative sum(I) / sum(U) over all expressions.
- Box IoU and accuracy at IoU >= 0.5.
- Generation statistics: answer parse-failure rate and mean generated length in tokens.
- For generalized referring expressions (gRefCOCO; GRES/ReLA), where an expression may name nothing:
  N-acc, the share of no-target expressions answered with nothing, and T-acc, the share of target
  expressions answered with something (``add_presence``). gIoU and cIoU need nothing extra: the caller
  scores an expression answered with nothing as an empty mask, so a correct "nothing" on a no-target
  expression (empty on empty) scores 1.0 in gIoU and adds nothing to cIoU's sums, and a wrong one adds
  its predicted pixels to the union, as ReLA's evaluator counts them.

``SegmentationMeter`` keeps per-expression counts keyed by sample id, refuses to score an id twice
(padding duplicates from distributed samplers would otherwise bias the result) and round-trips
through ``to_dict``/``from_dict`` so an interrupted evaluation can be saved and resumed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.iou import box_iou, expression_iou, mask_intersection_union

MeterValue = float | int | None
FORMAT = "segmentation-meter/1"


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
    # Per sample: (the expression names a target, the answer named one), for N-acc and T-acc.
    presence: dict[str, tuple[bool, bool]] = field(default_factory=dict)

    def add_mask(
        self,
        sample_id: str,
        pred: np.ndarray | torch.Tensor,
        gt: np.ndarray | torch.Tensor,
        ignore: np.ndarray | torch.Tensor | None = None,
    ) -> float:
        """Score one expression's predicted mask; returns its IoU."""
        return self.add_counts(sample_id, *mask_intersection_union(pred, gt, ignore))

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

    def add_presence(self, sample_id: str, has_target: bool, answered: bool) -> None:
        """Whether the expression names a target and whether the answer named one (False: answered with nothing)."""
        _check_new(sample_id, self.presence, "presence")
        self.presence[sample_id] = (bool(has_target), bool(answered))

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
            (self.presence, other.presence, "presence"),
        )
        for mine, theirs, kind in pairs:  # check everything first so a refused merge changes nothing
            for sample_id in theirs:
                _check_new(sample_id, mine, kind)
        self.masks.update(other.masks)
        self.boxes.update(other.boxes)
        self.generations.update(other.generations)
        self.groups.update(other.groups)
        self.presence.update(other.presence)

    def summary(self) -> dict[str, MeterValue]:
        """gIoU, cIoU, box IoU and accuracy, N-acc and T-acc as fractions in [0, 1]; None where nothing was
        scored."""
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
            "num_no_target": sum(not has_target for has_target, _ in self.presence.values()),
            "N_acc": _mean([float(not answered) for has_target, answered in self.presence.values() if not has_target]),
            "T_acc": _mean([float(answered) for has_target, answered in self.presence.values() if has_target]),
        }

    def subset(self, sample_ids: Iterable[str]) -> SegmentationMeter:
        """A meter holding only these samples' results."""
        keep = set(sample_ids)

        def pick(scored: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in scored.items() if k in keep}

        return SegmentationMeter(self.box_threshold, pick(self.masks), pick(self.boxes), pick(self.generations),
                                 pick(self.groups), pick(self.presence))

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
            "presence": {k: list(v) for k, v in self.presence.items()},
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
            presence={k: (bool(t), bool(a)) for k, (t, a) in data.get("presence", {}).items()},  # likewise
        )


def _check_new(sample_id: str, scored: dict[str, Any], kind: str) -> None:
    if sample_id in scored:
        raise ValueError(f"{kind} of sample {sample_id!r} was already scored")
