"""Rollouts: G sampled completions per prompt from the current policy.

Per image, the reasoner's vision features and the SAM 2 image features are computed once and shared
by its G completions (``generate`` expands the precomputed ``mm_encoder_outputs`` itself). Every rank
samples from its own current weights, so no rank trains on stale rollouts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lens_model.answer_parser import ParsedAnswer, parse_answer
from lens_model.modeling import LensModel
from lens_model.processor import EncodedPrompts
from training.data.sample import Sample
from training.grpo.config import GRPOConfig
from training.stage import BatchEncoder, ReasonerBatch


@dataclass
class Rollout:
    """One micro-batch of P prompts x G completions (rows grouped by prompt)."""

    batch: ReasonerBatch  # P rows
    group_size: int
    prompts: EncodedPrompts  # P*G rows
    grid_thw: torch.Tensor
    completion_ids: torch.Tensor
    completion_attention: torch.Tensor
    parsed: list[ParsedAnswer]
    logp_ref: torch.Tensor | None
    # Filled by the first policy pass (before any update, so still on-policy):
    advantages: torch.Tensor | None = None
    logp_old: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def samples(self) -> list[Sample]:
        """The sample of every completion row."""
        return [s for s in self.batch.samples for _ in range(self.group_size)]


def expand(prompts: EncodedPrompts, group: int) -> EncodedPrompts:
    return EncodedPrompts(*(t.repeat_interleave(group, dim=0) for t in (prompts.input_ids, prompts.attention_mask,
                                                                         prompts.mm_token_type_ids)))


def vision_rows(model: LensModel, batch: ReasonerBatch, group: int, recompute: bool, reasoner=None) -> list[torch.Tensor]:
    """Vision features for every completion row, computed once per image.

    ``recompute`` runs the vision tower again (needed when it trains, so gradients flow, or for a
    different ``reasoner``); otherwise the batch's features are reused.
    """
    if recompute:
        per_image = [model.vision_embeds(model.encode_image(s.image), reasoner=reasoner) for s in batch.samples]
    else:
        per_image = batch.vision
    return [features for features in per_image for _ in range(group)]


@torch.no_grad()
def generate(model: LensModel, reference, encoder: BatchEncoder, samples: list[Sample], cfg: GRPOConfig) -> Rollout:
    """Sample G completions per prompt (and score them under the reference policy when β > 0)."""
    group = cfg.rollout.group_size
    batch = encoder.encode(samples, model.config.template)
    was_training = model.training
    model.eval()
    generation = model.generate(
        batch.prompts, batch.grid_thw, [v.detach() for v in batch.vision], num_return_sequences=group, do_sample=True,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
        max_new_tokens=cfg.rollout.max_completion_length,
    )
    model.train(was_training)
    ids, attention = generation.completion_ids, generation.completion_attention
    eos = set(model.processor.eos_token_ids)
    texts = [model.processor.decode([t for t in row[m.bool()].tolist() if t not in eos]) for row, m in zip(ids, attention)]
    prompts = expand(batch.prompts, group)
    grid = batch.grid_thw.repeat_interleave(group, dim=0)
    logp_ref = None
    if reference is not None:
        ref_vision = vision_rows(model, batch, group, recompute=True, reasoner=reference)
        logp_ref, _ = model.sequence_forward(prompts, grid, ref_vision, ids, attention, with_logprobs=True,
                                             reasoner=reference, with_query_states=False)
    return Rollout(batch, group, prompts, grid, ids, attention, [parse_answer(t) for t in texts], logp_ref)
