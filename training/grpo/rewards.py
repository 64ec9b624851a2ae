"""GRPO rewards for LENS: format, box IoU and mask IoU, combined as λ1·format + λ2·box + λ3·mask.

Every reward is a float in [0, 1] and never raises on model output: unparseable answers, missing,
degenerate (zero-area or inverted) and non-finite boxes score 0, and no IoU ever divides by zero.

Frames: ``ParsedAnswer.box`` is in the reasoner's smart-resized frame (the pixels Qwen2.5-VL saw).
``box_iou_reward`` compares boxes as given, so the caller passes the ground-truth box in that same
frame (the authors did) or maps both into one frame with ``lens_model.answer_parser.map_box``.
The frames differ by a per-axis scale, which leaves IoU unchanged, so either common frame gives the
same reward; only mixing frames is wrong.

Linear vs squared: the paper defines the box and mask rewards as IoU; the released code rewards IoU²
(``squared=True``), which sharpens the difference between good and mediocre samples.

Several objects and none: the box reward matches the answer's boxes to the ground truth's one to one
(``training.iou.match_boxes``) and divides the matched IoUs by the larger count, so a missing or an
extra box costs its share; on a no-target sample it is the no-target reward (1 for the answer
``[]``, 0 for any box), and ``[]`` on a sample with a target earns 0. With one box on each side it
is the IoU, as before. The mask reward compares the answer's mask (the union of its instances,
empty for ``[]``) with the union of the ground truth's.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from lens_model.answer_parser import ParsedAnswer
from lens_model.result import Box
from training.iou import box_iou, mask_iou, match_boxes

TEMPLATES = ("reasoning", "direct")
REWARD_NAMES = ("format", "box", "mask")
MaskLike = np.ndarray | torch.Tensor


def format_reward(parsed: ParsedAnswer, template: str) -> float:
    """1.0 when the answer follows ``template`` ("reasoning": think + answer tags around valid JSON with
    a box; "direct": valid JSON with a box), else 0.0."""
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    return 1.0 if parsed.format_ok(template) else 0.0


def box_iou_reward(pred_box: Box | None, gt_box: Box | None, squared: bool = False) -> float:
    """IoU (or IoU² with ``squared``) of one predicted and one ground-truth box; 0.0 if either is missing."""
    if pred_box is None or gt_box is None:
        return 0.0
    iou = box_iou(pred_box, gt_box)
    return iou * iou if squared else iou


def instances_box_reward(pred_boxes: Sequence[Box], gt_boxes: Sequence[Box], squared: bool = False) -> float:
    """Σ matched IoU (or IoU²) / max(#pred, #gt): each box of either side that is missing or extra
    costs its share; 0.0 when either side has no box."""
    if not pred_boxes or not gt_boxes:
        return 0.0
    matched = [box_iou_reward(pred_boxes[i], gt_boxes[j], squared) for i, j, _ in match_boxes(pred_boxes, gt_boxes)]
    return sum(matched) / max(len(pred_boxes), len(gt_boxes))


def no_target_reward(parsed: ParsedAnswer, has_target: bool) -> float:
    """1.0 for the no-target answer ``[]`` on a sample without target, else 0.0 (any box, or ``[]``
    when something does match)."""
    return 1.0 if parsed.no_target and not has_target else 0.0


def box_reward(parsed: ParsedAnswer, gt_boxes: Sequence[Box], squared: bool = False) -> float:
    """The box reward of an answer against every ground-truth box (none: a no-target sample)."""
    if not gt_boxes or parsed.no_target:
        return no_target_reward(parsed, has_target=bool(gt_boxes))
    return instances_box_reward(parsed.boxes, gt_boxes, squared=squared)


def mask_iou_reward(
    pred_mask: MaskLike, gt_mask: MaskLike, ignore: MaskLike | None = None, squared: bool = False
) -> float:
    iou = mask_iou(pred_mask, gt_mask, ignore)
    return iou * iou if squared else iou


def unified_reward(components: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Σ weights[k] · components[k]. Both must name the same rewards, so a typo cannot silently drop
    one; give a reward weight 0 to switch it off (the RefCOCO stage 2 of the authors has no format)."""
    if set(components) != set(weights):
        raise ValueError(f"reward components {sorted(components)} and weights {sorted(weights)} name different rewards")
    return float(sum(weights[name] * components[name] for name in components))


def reward_components(
    parsed: ParsedAnswer,
    *,
    template: str,
    gt_boxes: Sequence[Box],
    pred_mask: MaskLike,
    gt_mask: MaskLike,
    ignore: MaskLike | None = None,
    squared: bool = False,
) -> dict[str, float]:
    """The three LENS rewards of one completion, keyed by ``REWARD_NAMES``: ``gt_boxes`` are every
    ground-truth box in the answer's frame, ``pred_mask`` the answer's mask (the union of its
    instances' masks, empty for ``[]``) and ``gt_mask`` the union of the ground truth's."""
    return {
        "format": format_reward(parsed, template),
        "box": box_reward(parsed, gt_boxes, squared=squared),
        "mask": mask_iou_reward(pred_mask, gt_mask, ignore=ignore, squared=squared),
    }
