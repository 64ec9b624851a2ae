"""Rollouts: G sampled completions per prompt from the current policy.

Per image, the reasoner's vision features and the SAM 2 image features are computed once and shared
by its G completions (``generate`` expands the precomputed vision features itself). Every rank
samples from its own current weights, so no rank trains on stale rollouts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from lens_model.answer_parser import ParsedAnswer, parse_answer
from lens_model.config import GenerationConfig
from lens_model.modeling import Completions, LensModel, ReasonerInputs
from training.batches import BatchEncoder, ReasonerBatch
from training.common.engine import Engine
from training.data.sample import Sample


@dataclass
class Rollout:
    """One micro-batch of P prompts x G completions (rows grouped by prompt)."""

    batch: ReasonerBatch  # P rows
    group_size: int
    inputs: ReasonerInputs  # P*G rows
    completions: Completions  # P*G rows
    parsed: list[ParsedAnswer]
    logp_ref: torch.Tensor | None
    # Filled by the first policy pass (before any update, so still on-policy):
    advantages: torch.Tensor | None = None
    logp_old: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.completions.ids.shape[0]

    @property
    def samples(self) -> list[Sample]:
        """The sample of every completion row."""
        return [s for s in self.batch.samples for _ in range(self.group_size)]


def recomputed_vision(model: LensModel, rollout_inputs: ReasonerInputs, batch: ReasonerBatch, group: int,
                      reasoner: nn.Module | None = None) -> ReasonerInputs:
    """``rollout_inputs`` with the vision features run again, once per image: for a vision tower that
    trains (so gradients flow) or for another ``reasoner``."""
    per_image = [model.vision_embeds(model.encode_image(s.image), reasoner=reasoner) for s in batch.samples]
    return dataclasses.replace(rollout_inputs, vision=[features for features in per_image for _ in range(group)])


class RolloutSampler:
    """The GRPO stage's rollout hook (``training.loop``): samples G completions per prompt and, when
    β > 0, scores them under the frozen ``reference`` policy."""

    def __init__(self, sampling: GenerationConfig, group_size: int, reference: nn.Module | None,
                 reference_dtype: torch.dtype | None) -> None:
        self.sampling = sampling
        self.group_size = group_size
        self.reference = reference
        self.reference_dtype = reference_dtype
        self._reference_placed = False

    @torch.no_grad()
    def __call__(self, engine: Engine, encoder: BatchEncoder, samples: list[Sample]) -> Rollout:
        model, group = encoder.model, self.group_size
        batch = encoder.encode(samples, model.config.template)
        was_training = model.training
        model.eval()
        detached = dataclasses.replace(batch.inputs, vision=[v.detach() for v in batch.inputs.vision])
        completions = model.generate(detached, num_return_sequences=group, generation=self.sampling)
        model.train(was_training)
        eos = set(model.eos_token_ids)
        texts = [model.processor.decode([t for t in row[m.bool()].tolist() if t not in eos])
                 for row, m in zip(completions.ids, completions.attention)]
        inputs = batch.inputs.repeat_rows(group)
        logp_ref = None
        if self.reference is not None:
            if not self._reference_placed:
                self.reference.to(engine.device, self.reference_dtype or model.dtype)
                self._reference_placed = True
            ref_inputs = recomputed_vision(model, inputs, batch, group, reasoner=self.reference)
            logp_ref = engine(ref_inputs, completions, return_logprobs=True, reasoner=self.reference).logprobs
        return Rollout(batch, group, inputs, completions, [parse_answer(t) for t in texts], logp_ref)
