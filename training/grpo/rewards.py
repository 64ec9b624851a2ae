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
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from lens_model.answer_parser import ParsedAnswer
from lens_model.result import Box

TEMPLATES = ("reasoning", "direct")
REWARD_NAMES = ("format", "box", "mask")
MaskLike = np.ndarray | torch.Tensor


def format_reward(parsed: ParsedAnswer, template: str) -> float:
    """1.0 when the answer follows ``template`` ("reasoning": think + answer tags around valid JSON with
    a box; "direct": valid JSON with a box), else 0.0."""
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    return 1.0 if parsed.format_ok(template) else 0.0


def box_iou(pred: Box, gt: Box) -> float:
    """IoU of two (x1, y1, x2, y2) boxes with ordered corners, continuous coordinates (no +1 pixel).
    0.0 when either box is degenerate, inverted or not finite."""
    values = (*pred, *gt)
    if not all(math.isfinite(v) for v in values):
        return 0.0
    area_pred = _area(pred)
    area_gt = _area(gt)
    if area_pred <= 0.0 or area_gt <= 0.0:
        return 0.0
    inter_w = min(pred[2], gt[2]) - max(pred[0], gt[0])
    inter_h = min(pred[3], gt[3]) - max(pred[1], gt[1])
    inter = max(inter_w, 0.0) * max(inter_h, 0.0)
    union = area_pred + area_gt - inter
    return min(max(inter / union, 0.0), 1.0)  # union >= max(areas) > 0


def box_iou_reward(pred_box: Box | None, gt_box: Box | None, squared: bool = False) -> float:
    """IoU (or IoU² with ``squared``) of the predicted and ground-truth boxes; 0.0 if either is missing."""
    if pred_box is None or gt_box is None:
        return 0.0
    iou = box_iou(pred_box, gt_box)
    return iou * iou if squared else iou


def mask_iou(pred_mask: MaskLike, gt_mask: MaskLike, ignore: MaskLike | None = None) -> float:
    """IoU of two binary masks of the same shape (bool or integer 0/1; threshold logits first).
    ``ignore`` marks pixels left out of both intersection and union (e.g. GT value 255).
    Empty ∪ empty (nothing predicted, nothing to find) is a perfect answer: 1.0, as in the gIoU metric."""
    pred = _as_bool(pred_mask, "pred_mask")
    gt = _as_bool(gt_mask, "gt_mask").to(pred.device)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: pred {tuple(pred.shape)} vs gt {tuple(gt.shape)}")
    if ignore is not None:
        valid = ~_as_bool(ignore, "ignore").to(pred.device)
        if valid.shape != pred.shape:
            raise ValueError(f"ignore shape {tuple(valid.shape)} differs from mask shape {tuple(pred.shape)}")
        pred, gt = pred & valid, gt & valid
    union = int((pred | gt).sum())
    if union == 0:
        return 1.0
    return int((pred & gt).sum()) / union


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
    gt_box: Box | None,
    pred_mask: MaskLike,
    gt_mask: MaskLike,
    ignore: MaskLike | None = None,
    squared: bool = False,
) -> dict[str, float]:
    """The three LENS rewards of one completion, keyed by ``REWARD_NAMES``."""
    return {
        "format": format_reward(parsed, template),
        "box": box_iou_reward(parsed.box, gt_box, squared=squared),
        "mask": mask_iou_reward(pred_mask, gt_mask, ignore=ignore, squared=squared),
    }


def _area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def _as_bool(mask: MaskLike, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(mask)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise TypeError(f"{name} must be boolean or integer 0/1, got {tensor.dtype}; threshold it first")
    return tensor.bool()
