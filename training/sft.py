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
model. A recipe may add an ``AuxiliaryLoss`` term (the demo recipe grounds attention with one).
The loop (checkpoints, resume, logging, evaluation, export) is ``training.loop.train_stage``; the
periodic evaluation reports the parse-failure rate and the box accuracy of greedy generations.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch

from lens_model.modeling import LensModel
from training.batches import BatchEncoder, ReasonerBatch
from training.common.config import parse_cli, stage_main
from training.common.engine import Engine
from training.lora import LoraSection, merge_lora, stage_trainable
from training.loop import VISION_TOWER, train_stage
from training.stage_config import StageConfig
from training.starting_model import build_seeded_model


@dataclass
class SFTConfig(StageConfig):
    # Parameter-name prefixes that learn (besides the LoRA adapters, if any).
    trainable: list[str] = field(default_factory=lambda: ["reasoner."])
    freeze_vision_tower: bool = False
    lora: LoraSection = field(default_factory=LoraSection)


class AuxiliaryLoss(Protocol):
    """An extra term of the SFT loss, added with ``weight``: ``observe`` wraps the forward pass (to
    record what the term reads of it), then the term is computed from the batch and the record."""

    weight: float

    def observe(self, model: LensModel) -> contextlib.AbstractContextManager[Any]: ...

    def __call__(self, model: LensModel, batch: ReasonerBatch, answers: list[str],
                 observed: Any) -> tuple[torch.Tensor, dict[str, float]]: ...


def completion_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-probability over the completion tokens of the batch (padding excluded)."""
    mask = mask.to(logprobs.dtype)
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1.0)


def sft_loss(engine: Engine, encoder: BatchEncoder, samples,
             aux: AuxiliaryLoss | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    model = encoder.model
    template = model.config.template
    batch = encoder.encode(samples, template, with_sam_features=False)
    answers = batch.teacher_answers(template)
    completions = model.encode_completions(answers)
    with aux.observe(model) if aux is not None else contextlib.nullcontext() as observed:
        out = engine(batch.inputs, completions, return_logprobs=True)
    nll = completion_nll(out.logprobs, completions.attention)
    metrics = {"completion_nll": float(nll.detach()), "completion_tokens": float(completions.attention.sum()) / len(samples)}
    loss = nll
    if aux is not None:
        term, aux_metrics = aux(model, batch, answers, observed)
        metrics.update(aux_metrics)
        loss = nll + aux.weight * term
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def train(cfg: SFTConfig, aux: AuxiliaryLoss | None = None) -> None:
    model = build_seeded_model(cfg)
    exclude = [VISION_TOWER] if cfg.freeze_vision_tower else []
    params = stage_trainable(model, list(cfg.trainable), cfg.lora, exclude)
    train_stage(cfg, "sft", model, params, partial(sft_loss, aux=aux),
                before_export=merge_lora if cfg.lora.rank > 0 else None)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(argv, SFTConfig, description="LENS warm start: supervised fine-tuning of the answer format")

    def run() -> int:
        train(cfg)
        return 0

    return stage_main("sft", run)


if __name__ == "__main__":
    sys.exit(main())
