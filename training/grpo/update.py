"""The policy pass: one forward of prompt + completion + queries per completion gives the completion
log-probs, the query states and hence the masks; the masks give the mask reward (first pass) and the
segmentation loss. Loss = GRPO(unified reward, k3 KL) + α · (BCE + Dice)."""
from __future__ import annotations

import torch

from lens_model import sam_head
from lens_model.modeling import LensModel
from training.batches import BatchEncoder
from training.common.engine import Engine
from training.grpo.config import GRPOConfig
from training.grpo.objective import group_advantages, grpo_loss
from training.grpo.rewards import REWARD_NAMES, reward_components, unified_reward
from training.grpo.rollout import Rollout, recomputed_vision
from training.losses import segmentation_loss
from training.loop import VISION_TOWER, is_frozen


@torch.no_grad()
def rewards_of(model: LensModel, rollout: Rollout, mask_logits: torch.Tensor, cfg: GRPOConfig) -> dict[str, torch.Tensor]:
    """Reward components of every completion; boxes are compared in the reasoner's frame."""
    gt_boxes = rollout.batch.gt_boxes_in_reasoner_frame()
    values: dict[str, list[float]] = {name: [] for name in REWARD_NAMES}
    for row, (parsed, sample) in enumerate(zip(rollout.parsed, rollout.samples)):
        pred = sam_head.upsample_logits(mask_logits[row : row + 1].detach(), sample.height, sample.width)[0] > 0
        parts = reward_components(parsed, template=model.config.template, gt_box=gt_boxes[row // rollout.group_size],
                                  pred_mask=pred.cpu(), gt_mask=sample.mask, ignore=sample.ignore,
                                  squared=cfg.rewards.squared)
        for name in REWARD_NAMES:
            values[name].append(parts[name])
    return {name: torch.tensor(v) for name, v in values.items()}


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
            "parse_failure": sum(p.box is None for p in rollout.parsed) / len(rollout.parsed),
        }
    # On the first pass π_old = π_θ (ratio 1, nothing clipped); later passes use the stored log-probs.
    old = None if first else rollout.logp_old
    rl_loss, stats = grpo_loss(logp, old, rollout.logp_ref, rollout.advantages, attention,
                               beta=cfg.objective.beta, eps=cfg.objective.epsilon,
                               normalisation=cfg.objective.normalisation)
    loss = rl_loss
    if cfg.objective.seg_weight:
        seg, parts, _ = segmentation_loss(mask_logits, rollout.samples, cfg.objective.seg_loss)
        loss = loss + cfg.objective.seg_weight * seg
        rollout.stats.update({"seg_loss": float(seg.detach()), **{f"seg_{k}": v for k, v in parts.items() if k != "total"}})
    rollout.stats.update({"rl_loss": float(rl_loss.detach()), "loss": float(loss.detach()), **stats.as_dict()})
    return loss, dict(rollout.stats)
