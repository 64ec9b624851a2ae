"""The GRPO training loop: rollouts -> μ policy passes -> optimizer steps, with exact resume."""
from __future__ import annotations

import copy
import time

import torch

from training.common.engine import build_engine
from training.grpo.config import GRPOConfig
from training.grpo.rollout import Rollout, generate
from training.grpo.update import policy_loss
from training.loop import (SAM_IMAGE_ENCODER, VISION_TOWER, export, is_frozen, periodic_eval, periodic_eval_due,
                           stage_encoder, start_run)
from training.lora import merge_lora, stage_trainable
from training.stage import build_seeded_model, training_dataset


def set_rollout_train_modes(model) -> None:
    """Everything in train mode except the SAM 2 image encoder, whose features the G completions share.
    (Unlike ``training.loop.set_train_modes``, a frozen SAM 2 decoder stays in train mode here.)"""
    model.train()
    model.sam.image_encoder.eval()


def reference_policy(model, cfg: GRPOConfig):
    """A frozen copy of the starting reasoner for the KL term (None when β = 0)."""
    if cfg.objective.beta == 0:
        return None
    reference = copy.deepcopy(model.reasoner).eval()
    reference.requires_grad_(False)
    return reference


def mean_stats(rollouts: list[Rollout]) -> dict[str, float]:
    keys = rollouts[0].stats.keys()
    return {k: sum(r.stats[k] for r in rollouts) / len(rollouts) for k in keys}


def train(cfg: GRPOConfig) -> None:
    if cfg.rollout.group_size < 2:
        raise ValueError("rollout.group_size must be at least 2 (advantages are relative within a group)")
    model = build_seeded_model(cfg)
    reference = reference_policy(model, cfg)
    # Adapters (if any) go in after the reference copy, which keeps the plain starting weights.
    params = stage_trainable(model, list(cfg.trainable), cfg.lora)
    engine = build_engine(model, params, cfg.engine, total_steps=cfg.max_steps)
    if not is_frozen(model, SAM_IMAGE_ENCODER):
        raise ValueError("the SAM 2 image encoder stays frozen in GRPO (its features are shared by the G completions)")
    if reference is not None:
        reference.to(engine.device, torch.bfloat16 if cfg.engine.bf16 else model.dtype)
    set_rollout_train_modes(model)
    vision_trains = not is_frozen(model, VISION_TOWER)
    encoder = stage_encoder(model, cfg)
    run = start_run(cfg, "grpo", engine, training_dataset(cfg.data))
    state, logger = run.state, run.logger
    every = cfg.checkpoint.every_steps
    with logger:
        while state.global_step < cfg.max_steps:
            start = time.perf_counter()
            # Both go through the model's forward, where ZeRO-3 gathers the directly read parameters.
            rollouts = [model(generate, reference, encoder, next(run.stream), cfg) for _ in range(cfg.engine.grad_accum_steps)]
            rollout_s = time.perf_counter() - start
            saved_block = state.global_step // every if every else 0
            for _ in range(cfg.objective.inner_iterations):
                update_start = time.perf_counter()
                for rollout in rollouts:
                    with engine.autocast():
                        loss = engine(policy_loss, rollout, cfg, vision_trains)
                    engine.backward(loss)
                    stepped = engine.step()
                assert stepped, "one optimizer step per pass over the rollout buffer"
                state.global_step += 1
                state.data = run.sampler.state()
                timing = {"time_rollout_s": rollout_s, "time_update_s": time.perf_counter() - update_start}
                samples = sum(r.completion_ids.shape[0] for r in rollouts)
                logger.step(state.global_step, {**mean_stats(rollouts), **timing}, num_samples=samples, lr=engine.lr)
                rollout_s = 0.0
                if state.global_step >= cfg.max_steps:
                    break
            if periodic_eval_due(cfg, state.global_step):
                logger.write(state.global_step, periodic_eval(model, cfg))
                set_rollout_train_modes(model)
            # Checkpoints only between rollout buffers, so a resumed run never re-samples half a buffer.
            if every and state.global_step // every > saved_block:
                run.checkpoints.save(engine, state, cfg)
        run.finish(cfg, model, engine, periodic_eval)
    if cfg.lora.rank > 0:
        merge_lora(model)
    export(cfg, "grpo", model, state)
