"""Supervised warm start (SFT): teach the reasoner the answer format from ground-truth answers.

    python -m training.sft --config training/configs/sft_tiny.yaml [key=value ...]

Each sample is teacher-forced: prompt + the ground-truth completion in the exact format the model
generates at inference (``<think>reasoning</think><answer>[{"bbox_2d": ..., "label": ...}]</answer>``
for template "reasoning", a fenced JSON box for "direct"), box in the reasoner's resized frame. The
loss is the mean negative log-likelihood of the completion tokens (end-of-turn token included);
prompt and image tokens carry no loss. What learns is chosen by parameter-name prefix (default the
whole reasoner; ``freeze_vision_tower`` keeps the vision tower fixed). With ``lora.rank > 0`` the
language model's ``lora.target_modules`` get LoRA adapters (peft) and the reasoner learns only through
them, as in GRPO (``training.lora.lora_trainable``: ``trainable`` then only adds parts outside the
reasoner); the adapters are merged into the weights before export, so the output is a plain LENS
model. ``grounding_attention.weight > 0`` adds the attention-grounding loss of
``training.grounding_attention`` (for reasoners trained from scratch). The loop (checkpoints, resume, logging, evaluation, export) is ``training.loop.run_supervised``; the periodic evaluation reports the
parse-failure rate and the box accuracy of greedy generations.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial

import torch

from training.common.config import parse_cli
from training.grounding_attention import (GroundingAttentionSection, attention_modules, completion_groundings,
                                          grounding_attention_loss, recorded_attention)
from training.lora import LoraSection, merge_lora, stage_trainable
from training.loop import VISION_TOWER, run_supervised
from training.stage import BatchEncoder, StageConfig, build_seeded_model


@dataclass
class SFTConfig(StageConfig):
    # Parameter-name prefixes that learn (besides the LoRA adapters, if any).
    trainable: list[str] = field(default_factory=lambda: ["reasoner."])
    freeze_vision_tower: bool = False
    lora: LoraSection = field(default_factory=LoraSection)
    grounding_attention: GroundingAttentionSection = field(default_factory=GroundingAttentionSection)


def completion_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-probability over the completion tokens of the batch (padding excluded)."""
    mask = mask.to(logprobs.dtype)
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1.0)


def sft_step(model, encoder: BatchEncoder, samples,
             grounding: GroundingAttentionSection | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    template = model.config.template
    batch = encoder.encode(samples, template, with_sam_features=False)
    answers = batch.teacher_answers(template)
    ids, mask = model.encode_completions(answers)
    grounded = grounding is not None and grounding.weight > 0
    modules = attention_modules(model.reasoner, grounding.layers) if grounded else []
    with recorded_attention(modules, grounding.head if grounded else 0) as attention:
        logprobs, _ = model.sequence_forward(batch.prompts, batch.grid_thw, batch.vision, ids, mask,
                                             with_logprobs=True, with_query_states=False)
    nll = completion_nll(logprobs, mask)
    metrics = {"completion_nll": float(nll.detach()), "completion_tokens": float(mask.sum()) / len(samples)}
    loss = nll
    if grounded:
        grids = [model.processor.token_grid(g) for g in batch.grid_thw]
        groundings = [completion_groundings(model.processor.tokenizer, answer, sample, box, size, grid, grounding)
                      for answer, sample, box, size, grid in zip(answers, samples, batch.gt_boxes_in_reasoner_frame(),
                                                                   batch.resized_sizes, grids)]
        aux = grounding_attention_loss(attention, batch.prompts.input_ids,
                                       model.processor.image_token_id, grids, groundings)
        metrics["grounding_attention"] = float(aux.detach())
        loss = nll + grounding.weight * aux
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def train(cfg: SFTConfig) -> None:
    model = build_seeded_model(cfg)
    exclude = [VISION_TOWER] if cfg.freeze_vision_tower else []
    params = stage_trainable(model, list(cfg.trainable), cfg.lora, exclude)
    step = partial(sft_step, grounding=cfg.grounding_attention)
    run_supervised(cfg, "sft", model, params, step, before_export=merge_lora if cfg.lora.rank > 0 else None)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(argv, SFTConfig, description="LENS warm start: supervised fine-tuning of the answer format")
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
