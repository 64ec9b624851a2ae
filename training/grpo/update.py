"""The policy pass: one forward of prompt + completion + queries per completion gives the completion
log-probs, the query states and hence the masks; the masks give the mask reward (first pass) and the
segmentation loss. Loss = GRPO(unified reward, k3 KL) + α · (BCE + Dice). An answer with several
boxes is rewarded on the mask the predictor would return (the LENS mask and SAM 2's box masks of its
other boxes); the segmentation loss trains the LENS mask on the object of the answer's first box."""
from __future__ import annotations

import numpy as np
import torch

from lens_model import sam_head
from lens_model.modeling import LensModel
from training.batches import BatchEncoder
from training.common.engine import Engine
from training.grpo.config import GRPOConfig
from training.grpo.objective import group_advantages, grpo_loss
from training.grpo.rewards import REWARD_NAMES, reward_components, unified_reward
from training.grpo.rollout import Rollout, recomputed_vision
from training.instance_targets import answered_instance_mask
from training.losses import segmentation_loss
from training.loop import VISION_TOWER, is_frozen


@torch.no_grad()
def answer_masks(model: LensModel, rollout: Rollout, mask_logits: torch.Tensor) -> list[torch.Tensor]:
    """Each completion's mask as the predictor builds it: the LENS mask of its first box united with
    SAM 2's box-prompted masks of its other boxes, empty for the answer ``[]`` (``docs/model.md``)."""
    masks = []
    for row, (parsed, sample) in enumerate(zip(rollout.parsed, rollout.samples)):
        image = row // rollout.group_size
        mask = sam_head.upsample_logits(mask_logits[row : row + 1].detach(), sample.height, sample.width)[0] > 0
        if parsed.no_target:
            mask = torch.zeros_like(mask)
        elif parsed.box is not None and len(parsed.boxes) > 1:
            logits, _ = model.box_masks(rollout.batch.sam_features, parsed.boxes[1:], rollout.batch.resized_sizes[image],
                                        [image] * (len(parsed.boxes) - 1))
            mask = mask | (sam_head.upsample_logits(logits, sample.height, sample.width) > 0).any(0)
        masks.append(mask.cpu())
    return masks


@torch.no_grad()
def rewards_of(model: LensModel, rollout: Rollout, mask_logits: torch.Tensor, cfg: GRPOConfig) -> dict[str, torch.Tensor]:
    """Reward components of every completion; boxes are compared in the reasoner's frame."""
    gt_boxes = rollout.batch.instance_boxes_in_reasoner_frame()
    values: dict[str, list[float]] = {name: [] for name in REWARD_NAMES}
    for row, (parsed, sample, pred) in enumerate(zip(rollout.parsed, rollout.samples, answer_masks(model, rollout, mask_logits))):
        parts = reward_components(parsed, template=model.config.template, gt_boxes=gt_boxes[row // rollout.group_size],
                                  pred_mask=pred, gt_mask=sample.mask, ignore=sample.ignore,
                                  squared=cfg.rewards.squared)
        for name in REWARD_NAMES:
            values[name].append(parts[name])
    return {name: torch.tensor(v) for name, v in values.items()}


def lens_targets(rollout: Rollout) -> list[np.ndarray]:
    """The mask the LENS mask of each completion learns (``training.instance_targets``)."""
    gt_boxes = rollout.batch.instance_boxes_in_reasoner_frame()
    return [answered_instance_mask(sample, parsed.box, gt_boxes[row // rollout.group_size])
            for row, (parsed, sample) in enumerate(zip(rollout.parsed, rollout.samples))]


def policy_loss(engine: Engine, encoder: BatchEncoder, rollout: Rollout, cfg: GRPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one rollout under the current weights; the first call also fixes rewards and advantages."""
    model = encoder.model
    first = rollout.advantages is None
    group = rollout.group_size
    inputs = rollout.inputs
    if not is_frozen(model, VISION_TOWER):  # the cached features carry no gradient
        inputs = recomputed_vision(model, inputs, rollout.batch, group)
    out = engine(inputs, rollout.completions, rollout.batch.sam_features, rows_per_image=group, return_logprobs=True)
    logp, mask_logits, attention = out.logprobs, out.mask_logits, rollout.completions.attention
    if first:
        components = rewards_of(model, rollout, mask_logits, cfg)
        weights = dict(cfg.rewards.weights)
        rewards = torch.tensor([unified_reward({n: float(components[n][i]) for n in REWARD_NAMES}, weights)
                                for i in range(len(rollout.parsed))])
        rollout.advantages = group_advantages(rewards, group_size=group, eps=cfg.objective.advantage_eps,
                                              unbiased=cfg.objective.unbiased_std).to(logp.device)
        rollout.logp_old = logp.detach()
        lengths = attention.sum(dim=1).float()
        rollout.stats = {
            "reward": float(rewards.mean()), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            **{f"reward_{n}": float(components[n].mean()) for n in REWARD_NAMES},
            "completion_length": float(lengths.mean()),
            "parse_failure": sum(p.box is None and not p.no_target for p in rollout.parsed) / len(rollout.parsed),
        }
    # On the first pass π_old = π_θ (ratio 1, nothing clipped); later passes use the stored log-probs.
    old = None if first else rollout.logp_old
    rl_loss, stats = grpo_loss(logp, old, rollout.logp_ref, rollout.advantages, attention,
                               beta=cfg.objective.beta, eps=cfg.objective.epsilon,
                               normalisation=cfg.objective.normalisation)
    loss = rl_loss
    if cfg.objective.seg_weight:
        seg, parts, _ = segmentation_loss(mask_logits, rollout.samples, cfg.objective.seg_loss, lens_targets(rollout))
        loss = loss + cfg.objective.seg_weight * seg
        rollout.stats.update({"seg_loss": float(seg.detach()), **{f"seg_{k}": v for k, v in parts.items() if k != "total"}})
    rollout.stats.update({"rl_loss": float(rl_loss.detach()), "loss": float(loss.detach()), **stats.as_dict()})
    return loss, dict(rollout.stats)
