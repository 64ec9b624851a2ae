"""The GRPO stage on the shared loop: rollouts (``training.grpo.rollout``) -> μ policy passes
(``training.grpo.update``) -> optimizer steps; checkpoints, resume and logging are ``training.loop``'s."""
from __future__ import annotations

import copy
from functools import partial

import torch
from omegaconf import OmegaConf

from lens_model.config import GenerationConfig
from lens_model.modeling import LensModel
from training.grpo.config import GRPOConfig
from training.grpo.rollout import RolloutSampler
from training.grpo.update import policy_loss
from training.lora import merge_lora, stage_trainable
from training.loop import train_stage
from training.starting_model import build_seeded_model


def set_rollout_train_modes(model: LensModel) -> None:
    """Everything in train mode except the SAM 2 image encoder, whose features the G completions share.
    (Unlike ``training.loop.set_train_modes``, a frozen SAM 2 decoder stays in train mode here.)"""
    model.train()
    model.sam.image_encoder.eval()


def reference_policy(model: LensModel, cfg: GRPOConfig):
    """A frozen copy of the starting reasoner for the KL term (None when β = 0)."""
    if cfg.objective.beta == 0:
        return None
    reference = copy.deepcopy(model.reasoner).eval()
    reference.requires_grad_(False)
    return reference


def train(cfg: GRPOConfig) -> None:
    if cfg.rollout.group_size < 2:
        raise ValueError("rollout.group_size must be at least 2 (advantages are relative within a group)")
    model = build_seeded_model(cfg)
    reference = reference_policy(model, cfg)
    # Adapters (if any) go in after the reference copy, which keeps the plain starting weights.
    params = stage_trainable(model, list(cfg.trainable), cfg.lora)
    encoder_params = {id(p) for p in model.sam.image_encoder.parameters()}
    if any(id(p) in encoder_params for p in params):
        raise ValueError("the SAM 2 image encoder stays frozen in GRPO (its features are shared by the G completions)")
    sampling = GenerationConfig(**OmegaConf.to_container(cfg.rollout.sampling))
    rollout = RolloutSampler(sampling, cfg.rollout.group_size, reference,
                             torch.bfloat16 if cfg.engine.bf16 else None)
    train_stage(cfg, "grpo", model, params, partial(policy_loss, cfg=cfg), rollout=rollout,
                passes=cfg.objective.inner_iterations, train_modes=set_rollout_train_modes,
                before_export=merge_lora if cfg.lora.rank > 0 else None)
