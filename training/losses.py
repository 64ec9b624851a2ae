"""Mask losses for the segmentation head: BCE-with-logits, Dice and optional sigmoid focal loss,
and ``segmentation_loss``, the mask loss of a batch of samples at their original resolution.

All take logits and targets of shape [B, H, W] (targets in {0, 1}, bool or float) and an optional
``ignore`` mask of the same shape whose True pixels take no part. Each loss is computed per sample
(mean over that sample's valid pixels; Dice over its valid pixels) and then averaged over the batch,
which is what the LENS stage-1 loss does. Half-precision logits are computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lens_model import sam_head
from training.data.sample import Sample
from training.iou import mask_iou

DICE_SMOOTHING = 1.0


@dataclass
class MaskLossWeights:
    """Weights of the components in the total; a zero weight skips that component. ``focal_alpha``
    below zero turns off the class balancing of the focal loss. (Not frozen: it is also a config
    section, and OmegaConf makes frozen dataclasses read-only, so ``loss.dice=0.5`` could not apply.)"""

    bce: float = 1.0
    dice: float = 1.0
    focal: float = 0.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        if min(self.bce, self.dice, self.focal) < 0 or self.bce + self.dice + self.focal == 0:
            raise ValueError(f"loss weights must be >= 0 with at least one positive: {self}")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")


def _prepared(
    logits: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if logits.dim() != 3 or logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must both be [B, H, W], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if ignore is not None and ignore.shape != logits.shape:
        raise ValueError(f"ignore must match logits {tuple(logits.shape)}, got {tuple(ignore.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16/fp16 -> fp32, float64 stays
    valid = torch.ones_like(logits, dtype=dtype) if ignore is None else (~ignore.bool()).to(dtype)
    return logits.to(dtype), targets.to(dtype), valid


def _per_sample_mean(pixel_loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    per_sample = (pixel_loss * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)
    return per_sample.mean()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    logits, targets, valid = _prepared(logits, targets, ignore)
    return _per_sample_mean(F.binary_cross_entropy_with_logits(logits, targets, reduction="none"), valid)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """1 - (2 * sum(p * q) + 1) / (sum(p) + sum(q) + 1) per sample, p = sigmoid(logits)."""
    logits, targets, valid = _prepared(logits, targets, ignore)
    probabilities = torch.sigmoid(logits) * valid
    targets = targets * valid
    overlap = (probabilities * targets).flatten(1).sum(1)
    total = probabilities.flatten(1).sum(1) + targets.flatten(1).sum(1)
    return (1 - (2 * overlap + DICE_SMOOTHING) / (total + DICE_SMOOTHING)).mean()


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore: torch.Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet): BCE scaled by (1 - p_t)^gamma and, if alpha >= 0, by alpha_t."""
    logits, targets, valid = _prepared(logits, targets, ignore)
    probabilities = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    pixel_loss = cross_entropy * (1 - p_t) ** gamma
    if alpha >= 0:
        pixel_loss = pixel_loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return _per_sample_mean(pixel_loss, valid)


def mask_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore: torch.Tensor | None = None,
    weights: MaskLossWeights = MaskLossWeights(),
) -> dict[str, torch.Tensor]:
    """The weighted components that are switched on (``bce``, ``dice``, ``focal``) and ``total``."""
    components: dict[str, torch.Tensor] = {}
    if weights.bce:
        components["bce"] = bce_loss(logits, targets, ignore)
    if weights.dice:
        components["dice"] = dice_loss(logits, targets, ignore)
    if weights.focal:
        components["focal"] = focal_loss(logits, targets, ignore, weights.focal_alpha, weights.focal_gamma)
    components["total"] = torch.stack([getattr(weights, name) * value for name, value in components.items()]).sum()
    return components


def segmentation_loss(low_res_logits: torch.Tensor, samples: list[Sample], weights: MaskLossWeights,
                      targets: Sequence[np.ndarray | None] | None = None
                      ) -> tuple[torch.Tensor, dict[str, float], list[float]]:
    """Mask loss of each row at its sample's original resolution (fp32), averaged over rows.

    ``targets`` are the rows' target masks, by default ``sample.mask``; a row whose target is None
    takes no part. Returns the differentiable total (zero, still attached to the logits, when no row
    takes part), the mean of each component, and each scored row's mask IoU.
    """
    totals, sums, ious = [], {}, []
    targets = [s.mask for s in samples] if targets is None else targets
    for logits, sample, gt in zip(low_res_logits, samples, targets, strict=True):
        if gt is None:
            continue
        full = sam_head.upsample_logits(logits[None], sample.height, sample.width)
        target = torch.from_numpy(gt).to(full.device)[None].float()
        ignore = None if sample.ignore is None else torch.from_numpy(sample.ignore).to(full.device)[None]
        parts = mask_loss(full, target, ignore, weights)
        totals.append(parts["total"])
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        ious.append(mask_iou((full[0] > 0).cpu().numpy(), gt, sample.ignore))
    if not totals:
        return low_res_logits.sum() * 0.0, {}, []
    means = {name: value / len(totals) for name, value in sums.items()}
    return torch.stack(totals).mean(), means, ious
