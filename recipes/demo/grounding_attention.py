"""Attention grounding: an auxiliary SFT loss that points one attention head at the target.

A reasoner trained from scratch (the demo model) learns to bind a query to one of several objects
only after a long plateau: the coordinate loss reaches the attention logits that must match "the red
circle" to the red circle's image token only through a saddle of small query-key weights. This loss
supervises that attention directly. At every position that predicts a number of the answer's box,
head ``head`` of each layer in ``layers`` is trained to put its attention mass on the image token
holding the target's centre (``target: centre``) or spread over the target's mask (``target:
mask``): the cross-entropy between that target distribution over the merged image tokens and the
head's attention weights. With ``reasoning_points`` the numbers of every point "(x, y)" written in
the reasoning (the synthetic reasoning names each candidate's centre so) are grounded the same way,
on the token holding that point; points and boxes are in the reasoner's resized frame, as the answer
box is. Docs: docs/demo_model.md and, for what it measured, recipes/demo/RESEARCH_LOG.md.

The grounded head's probabilities are recomputed from its layer's inputs (``recorded_attention``), so
the reasoner keeps its fast attention implementation; meant for small reasoners (the probabilities
are B x L x L per grounded layer), not for a pretrained 3B model, which already grounds.
"""
from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from lens_model.processor import token_at
from lens_model.result import Box

# A point "(x, y)", optionally described just before it: "a large red circle at (30, 41)".
POINT = re.compile(r"(?:\b(?:an?|the) (?P<words>(?:[a-z]+ ){1,3})at )?\((?P<x>\d+(?:\.\d+)?), (?P<y>\d+(?:\.\d+)?)\)")


@dataclass(frozen=True)
class GroundedTokens:
    """Completion tokens (indices) whose prediction should look at ``target`` (weights over the
    merged image tokens in raster order, summing to 1)."""

    positions: list[int]
    target: torch.Tensor


@dataclass
class GroundingAttentionSection:
    weight: float = 0.0  # 0: off
    layers: list[int] = field(default_factory=lambda: [-2, -1])  # language-model layers, negative from the top
    head: int = 0
    target: str = "centre"  # "centre" or "mask"
    reasoning_points: bool = False

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"grounding_attention.weight must be >= 0, got {self.weight}")
        if self.target not in ("centre", "mask"):
            raise ValueError(f"grounding_attention.target must be 'centre' or 'mask', got {self.target!r}")
        if self.weight > 0 and not self.layers:
            raise ValueError("grounding_attention.layers is empty")


def attention_modules(reasoner: nn.Module, layers: Sequence[int]) -> list[nn.Module]:
    """The self-attention modules of the language model's ``layers`` (LoRA-wrapped or not)."""
    found = {}
    for name, module in reasoner.named_modules():
        parts = name.split(".")
        if len(parts) >= 4 and parts[-4:-2] == ["language_model", "layers"] and parts[-1] == "self_attn":
            found[int(parts[-2])] = module
    if not found:
        raise ValueError("the reasoner has no language_model.layers.N.self_attn modules")
    count = len(found)
    chosen = []
    for layer in layers:
        if not -count <= layer < count:
            raise ValueError(f"grounding_attention.layers: {layer} is out of range for {count} layers")
        chosen.append(found[layer % count])
    return chosen


def head_probabilities(module: nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                       mask: torch.Tensor | None, head: int) -> torch.Tensor:
    """Attention probabilities (B, L, L) of one head of a Qwen2.5-VL text attention ``module``, recomputed
    from its inputs: the same projections, rotary embedding, scaling and mask as its forward, so the
    model itself can run any attention implementation (SDPA never returns the probabilities, and eager
    attention for every head and layer costs more than the rest of a small model's step).
    ``mask`` is the mask the module received: None (causal), or (B, 1, L, L) boolean (True attends) or
    additive; a padding-only (B, L) mask, as flash attention gets, is refused rather than misread."""
    if not 0 <= head < module.num_heads:
        raise ValueError(f"grounding_attention.head {head} is out of range for {module.num_heads} heads")
    batch, length, _ = hidden.shape
    if mask is not None and (mask.ndim != 4 or mask.shape[-2:] != (length, length)):
        raise ValueError(f"grounding needs a (B, 1, {length}, {length}) attention mask (eager or SDPA attention, "
                         f"no KV cache), got shape {tuple(mask.shape)}")
    dim = module.head_dim
    kv_head = head // module.num_key_value_groups
    query = module.q_proj(hidden)[..., head * dim:(head + 1) * dim].view(batch, length, 1, dim).transpose(1, 2)
    key = module.k_proj(hidden)[..., kv_head * dim:(kv_head + 1) * dim].view(batch, length, 1, dim).transpose(1, 2)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    scores = (query @ key.transpose(-1, -2) * module.scaling)[:, 0].float()
    mask = torch.ones(length, length, dtype=torch.bool, device=scores.device).tril() if mask is None else mask[:, 0]
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool else scores + mask.float()
    return scores.softmax(-1)


@contextmanager
def recorded_attention(modules: Sequence[nn.Module], head: int) -> Iterator[list[torch.Tensor]]:
    """Collects head ``head``'s attention probabilities (B, L, L) in each module during a forward pass
    (whatever attention implementation the model runs)."""
    weights: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, kwargs: dict, _output: object) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        weights.append(head_probabilities(module, hidden, kwargs["position_embeddings"], kwargs.get("attention_mask"), head))

    handles = [module.register_forward_hook(keep, with_kwargs=True) for module in modules]
    try:
        yield weights
    finally:
        for handle in handles:
            handle.remove()


def point_target(point: tuple[float, float], size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """One-hot weights on the token holding ``point`` (x, y) of an image of ``size`` (width, height)."""
    weights = torch.zeros(grid[0] * grid[1])
    weights[token_at(point, size, grid)] = 1.0
    return weights


def box_target(mask: np.ndarray, box: Box, size: tuple[int, int], grid: tuple[int, int], target: str) -> torch.Tensor:
    """Weights for an answer box: its centre's token, or its object's ``mask`` pooled over the tokens."""
    if target == "mask" and mask.any():
        mask = torch.from_numpy(mask.astype("float32"))[None, None]
        weights = F.adaptive_avg_pool2d(mask, grid).flatten()
        return weights / weights.sum()
    return point_target(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), size, grid)


def completion_groundings(tokenizer, completion: str, instances: Sequence[tuple[Box, np.ndarray]],
                          size: tuple[int, int], grid: tuple[int, int],
                          section: GroundingAttentionSection) -> list[GroundedTokens]:
    """What the numbers of one teacher completion should look at: each answer box of ``instances``
    ((box, mask) pairs in the answer's order, boxes in the reasoner frame of ``size``, as written in
    the completion; none for the no-target answer) and, with ``reasoning_points``, every "(x, y)" of
    the reasoning with the words that describe it. Numbers elsewhere (in labels, say) are left alone."""
    offsets = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]

    def tokens_in(start: int, end: int, numbers_only: bool = True) -> list[int]:
        return [index for index, (lo, hi) in enumerate(offsets) if lo < end and hi > start
                and (not numbers_only or any(ch.isdigit() for ch in completion[lo:hi]))]

    think_end = completion.rfind("</think>")
    groundings, end = [], think_end + 1
    for box, mask in instances:
        coords = json.dumps([int(round(v)) for v in box])
        start = completion.find(coords, end)
        if start < 0:
            raise ValueError(f"the completion does not contain its box {coords}")
        end = start + len(coords)
        groundings.append(GroundedTokens(tokens_in(start, end), box_target(mask, box, size, grid, section.target)))
    if section.reasoning_points and think_end >= 0:
        for match in POINT.finditer(completion, 0, think_end):
            point = (float(match.group("x")), float(match.group("y")))
            # the words group ends in the space before "at"; without it the " at" token would overlap
            words = tokens_in(match.start("words"), match.end("words") - 1, numbers_only=False) if match.group("words") else []
            positions = words + tokens_in(match.start("x"), match.end("y"))
            groundings.append(GroundedTokens(positions, point_target(point, size, grid)))
    return groundings


def grounding_attention_loss(
    attention: Sequence[torch.Tensor],
    prompt_ids: torch.Tensor,
    image_token_id: int,
    grids: Sequence[tuple[int, int]],
    groundings: Sequence[Sequence[GroundedTokens]],
) -> torch.Tensor:
    """Mean over samples, layers and grounded tokens of the cross-entropy between the target weights
    and the grounded head's attention (B, L, L per layer) from the position that predicts the token to
    the sample's image tokens. Completion token t is predicted at prompt_len - 1 + t."""
    prompt_len = prompt_ids.shape[1]
    terms = []
    for row, (grid, sample_groundings) in enumerate(zip(grids, groundings, strict=True)):
        image = (prompt_ids[row] == image_token_id).nonzero().flatten()
        if len(image) != grid[0] * grid[1]:
            raise ValueError(f"sample {row}: {len(image)} image tokens for a {grid[0]}x{grid[1]} grid")
        positions = [t for g in sample_groundings for t in g.positions]
        if not positions:
            continue
        targets = torch.stack([g.target for g in sample_groundings for _ in g.positions])
        queries = torch.tensor([prompt_len - 1 + t for t in positions], device=prompt_ids.device)
        targets = targets.to(attention[0].device, torch.float32)
        for weights in attention:
            probs = weights[row].index_select(0, queries).index_select(1, image.to(queries.device))
            terms.append(-(targets * torch.log(probs.float() + 1e-8)).sum(-1))
    if not terms:
        return attention[0].new_zeros(())
    return torch.cat(terms).mean()


@dataclass
class AttentionGrounding:
    """The attention-grounding term as an SFT auxiliary loss (``training.sft.AuxiliaryLoss``)."""

    section: GroundingAttentionSection

    @property
    def weight(self) -> float:
        return self.section.weight

    def observe(self, model) -> contextlib.AbstractContextManager[list[torch.Tensor]]:
        return recorded_attention(attention_modules(model.reasoner, self.section.layers), self.section.head)

    def __call__(self, model, batch, answers: list[str], observed: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        grids = [model.processor.token_grid(g) for g in batch.inputs.grid_thw]
        groundings = [completion_groundings(model.processor.tokenizer, answer,
                                            [(box, mask) for box, (_, mask) in zip(boxes, sample.instances)],
                                            size, grid, self.section)
                      for answer, sample, boxes, size, grid in zip(answers, batch.samples, batch.instance_boxes_in_reasoner_frame(),
                                                                     batch.resized_sizes, grids)]
        term = grounding_attention_loss(observed, batch.inputs.prompts.input_ids, model.processor.image_token_id,
                                        grids, groundings)
        return term, {"grounding_attention": float(term.detach())}
