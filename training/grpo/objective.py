"""The GRPO objective as pure tensor functions: group advantages, PPO-clipped surrogate, k3 KL, loss.

Shapes: B = prompts × G completions, T = completion tokens (right-padded). ``logp_*`` are per-token
log-probabilities of the sampled completion tokens, [B, T]; ``completion_mask`` is 1 on real
completion tokens (up to and including the first end-of-turn token) and 0 on padding, [B, T];
``advantages`` are per completion, [B].

Per token t of completion i (to be minimised):
    ratio  = exp(logp_new - logp_old)
    loss_t = -min(ratio·A_i, clip(ratio, 1-eps_low, 1+eps_high)·A_i) + beta·k3_t
    k3_t   = exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1            (>= 0, unbiased KL estimate)
"sequence" normalisation averages loss_t over each completion's tokens, then over completions (the
GRPO paper and the LENS code); "token" sums over all completion tokens of the batch and divides by
their number (DAPO), so long completions weigh more.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ADVANTAGE_SCALES = ("std", "none")
NORMALISATIONS = ("sequence", "token")


def group_advantages(
    rewards: torch.Tensor,
    group_size: int | None = None,
    eps: float = 1e-4,
    scale: str = "std",
    unbiased: bool = True,
) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps) for rewards shaped [P, G], or flat [P·G] with ``group_size``
    (each prompt's G completions consecutive). Returns the input's shape.

    ``unbiased`` picks the std with Bessel's correction (divide by G-1), as torch.std and the authors'
    code; False divides by G. ``scale="none"`` only centres (Dr. GRPO). A group whose rewards are all
    equal gets exactly 0 advantage (its samples carry no learning signal)."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    if rewards.dim() == 1:
        if group_size is None or group_size < 1 or rewards.numel() % group_size:
            raise ValueError(f"flat rewards of length {rewards.numel()} need a group_size that divides it, got {group_size}")
        grouped = rewards.reshape(-1, group_size)
    elif rewards.dim() == 2:
        grouped = rewards
    else:
        raise ValueError(f"rewards must be [P*G] or [P, G], got shape {tuple(rewards.shape)}")
    if grouped.shape[1] < 2:
        raise ValueError("GRPO needs at least 2 completions per prompt")
    grouped = grouped.to(torch.promote_types(grouped.dtype, torch.float32))
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "std":
        centred = centred / (grouped.std(dim=1, keepdim=True, correction=1 if unbiased else 0) + eps)
    constant = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)
    return torch.where(constant, torch.zeros_like(centred), centred).reshape(rewards.shape)


def clipped_surrogate(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss -min(ratio·A, clip(ratio)·A), zero on padding, and the fraction of
    completion tokens where the clip is active (where it cuts the gradient)."""
    _check_shapes(logp_new, completion_mask, advantages, logp_old)
    adv = advantages.unsqueeze(-1).to(logp_new.dtype)
    ratio = torch.exp(_on_completion(logp_new - logp_old.detach(), completion_mask))
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    mask = completion_mask.to(logp_new.dtype)
    per_token = -torch.minimum(unclipped, clipped) * mask
    is_clipped = ((ratio < 1.0 - eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))
    return per_token, masked_mean(is_clipped.to(mask.dtype), mask).detach()


def kl_k3(logp_new: torch.Tensor, logp_ref: torch.Tensor, completion_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_new ‖ π_ref): exp(ref - new) - (ref - new) - 1, always >= 0
    (0 on padding when ``completion_mask`` is given). Gradients flow into ``logp_new`` only."""
    diff = logp_ref.detach() - logp_new
    if completion_mask is not None:
        diff = _on_completion(diff, completion_mask)
    return torch.exp(diff) - diff - 1.0


@dataclass(frozen=True)
class GRPOStats:
    """Detached scalars for logging; means over all completion tokens of the batch."""

    kl: torch.Tensor
    clip_fraction: torch.Tensor
    ratio: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        return {"kl": float(self.kl), "clip_fraction": float(self.clip_fraction), "ratio": float(self.ratio)}


def grpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor | None,
    logp_ref: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    beta: float = 0.04,
    eps: float | tuple[float, float] = 0.2,
    normalisation: str = "sequence",
) -> tuple[torch.Tensor, GRPOStats]:
    """Scalar GRPO loss (to minimise) and its stats.

    ``logp_old=None`` means one update per rollout batch (the LENS setting): old = new.detach(), the
    ratio is 1, nothing is clipped and the gradient is -A·∇logp. ``logp_ref`` may be None only with
    ``beta=0``. ``eps`` is one clip range or (eps_low, eps_high)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    if logp_old is None:
        logp_old = logp_new.detach()
    eps_low, eps_high = (eps, eps) if isinstance(eps, (int, float)) else eps
    per_token, clip_fraction = clipped_surrogate(logp_new, logp_old, advantages, completion_mask, eps_low, eps_high)
    mask = completion_mask.to(logp_new.dtype)
    if beta != 0.0:
        if logp_ref is None:
            raise ValueError("beta != 0 needs logp_ref")
        _check_shapes(logp_new, completion_mask, advantages, logp_ref)
        kl = kl_k3(logp_new, logp_ref, completion_mask)
        per_token = per_token + beta * kl
        mean_kl = masked_mean(kl.detach(), mask)
    else:
        mean_kl = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
    if normalisation == "sequence":
        loss = (per_token.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)).mean()
    else:
        loss = per_token.sum() / mask.sum().clamp(min=1.0)
    ratio = masked_mean(torch.exp(_on_completion(logp_new.detach() - logp_old.detach(), completion_mask)), mask)
    return loss, GRPOStats(kl=mean_kl, clip_fraction=clip_fraction, ratio=ratio)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 for an all-zero mask)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _on_completion(log_ratio: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    # Padding log-probs are arbitrary (even inf); zero their log-ratio before exp() so they cannot
    # turn into inf * 0 = nan in the masked sums or in the backward pass.
    return torch.where(completion_mask.bool(), log_ratio, torch.zeros_like(log_ratio))


def _check_shapes(logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, other: torch.Tensor) -> None:
    if logp.dim() != 2 or logp.shape != mask.shape or logp.shape != other.shape:
        raise ValueError(
            f"log-probs and completion_mask must all be [B, T]; got {tuple(logp.shape)}, {tuple(other.shape)}, "
            f"mask {tuple(mask.shape)}"
        )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B]={logp.shape[0]}, got {tuple(advantages.shape)}")
