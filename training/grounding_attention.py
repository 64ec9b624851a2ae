"""Attention grounding: an auxiliary SFT loss that points one attention head at the target.

A reasoner trained from scratch (the demo model) learns to bind a query to one of several objects
only after a long plateau: the coordinate loss reaches the attention logits that must match "the red
circle" to the red circle's image token only through a saddle of small query-key weights. This loss
supervises that attention directly. At every position that predicts a number of the answer's box,
head ``head`` of each layer in ``layers`` is trained to put its attention mass on the image token
holding the target's centre (``target: centre``) or spread over the target's mask (``target:
mask``): the cross-entropy between that target distribution over the merged image tokens and the
head's attention weights. Docs: docs/training.md and, for what it measured, docs/demo_model.md.

It needs the attention probabilities, so the reasoner runs with eager attention while it is on; meant
for small reasoners (the weights are B x heads x L x L per layer), not for a pretrained 3B model,
which already grounds.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.data.sample import Box, Sample


@dataclass
class GroundingAttentionSection:
    weight: float = 0.0  # 0: off
    layers: list[int] = field(default_factory=lambda: [-2, -1])  # language-model layers, negative from the top
    head: int = 0
    target: str = "centre"  # "centre" or "mask"

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


@contextmanager
def recorded_attention(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Collects each module's attention probabilities (B, heads, L, L) during a forward pass."""
    weights: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: tuple) -> None:
        if not isinstance(output, tuple) or len(output) < 2 or output[1] is None:
            raise RuntimeError("attention probabilities are not returned: the reasoner must use eager attention "
                               "(reasoner.set_attn_implementation('eager'))")
        weights.append(output[1])

    handles = [module.register_forward_hook(keep) for module in modules]
    try:
        yield weights
    finally:
        for handle in handles:
            handle.remove()


def target_distribution(sample: Sample, grid: tuple[int, int], target: str) -> torch.Tensor:
    """Target weights over the grid's merged image tokens in raster order, summing to 1."""
    rows, cols = grid
    if target == "mask" and sample.mask.any():
        mask = torch.from_numpy(sample.mask.astype("float32"))[None, None]
        weights = F.adaptive_avg_pool2d(mask, grid).flatten()
        return weights / weights.sum()
    x1, y1, x2, y2 = sample.box
    row = min(max(int((y1 + y2) / 2 / sample.height * rows), 0), rows - 1)
    col = min(max(int((x1 + x2) / 2 / sample.width * cols), 0), cols - 1)
    weights = torch.zeros(rows * cols)
    weights[row * cols + col] = 1.0
    return weights


def box_number_positions(tokenizer, completion: str, box: Box) -> list[int]:
    """Indices of the completion's tokens that spell the numbers of its answer box ``box`` (the
    reasoner-frame box the teacher answer was written with), not numbers in reasoning or labels."""
    answer_start = completion.rfind("</think>") + 1  # 0 when there is no reasoning
    coords = json.dumps([int(round(v)) for v in box])
    start = completion.find(coords, answer_start)
    if start < 0:
        raise ValueError(f"the completion does not contain its box {coords}")
    end = start + len(coords)
    encoded = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    return [index for index, (lo, hi) in enumerate(encoded["offset_mapping"])
            if lo < end and hi > start and any(ch.isdigit() for ch in completion[lo:hi])]


def grounding_attention_loss(
    attention: Sequence[torch.Tensor],
    head: int,
    prompt_ids: torch.Tensor,
    image_token_id: int,
    grids: Sequence[tuple[int, int]],
    targets: Sequence[torch.Tensor],
    number_positions: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Mean over samples, layers and box-number positions of the cross-entropy between ``targets``
    (weights over each sample's image tokens) and the head's attention from the position that
    predicts the number to the image tokens. Completion token t is predicted at prompt_len - 1 + t."""
    prompt_len = prompt_ids.shape[1]
    terms = []
    for row, (grid, target, positions) in enumerate(zip(grids, targets, number_positions, strict=True)):
        image = (prompt_ids[row] == image_token_id).nonzero().flatten()
        if len(image) != grid[0] * grid[1]:
            raise ValueError(f"sample {row}: {len(image)} image tokens for a {grid[0]}x{grid[1]} grid")
        if not positions:
            continue
        queries = torch.tensor([prompt_len - 1 + t for t in positions], device=prompt_ids.device)
        target = target.to(attention[0].device, attention[0].dtype)
        for weights in attention:
            probs = weights[row, head].index_select(0, queries).index_select(1, image.to(queries.device))
            terms.append(-(target * torch.log(probs.float() + 1e-8)).sum(-1).mean())
    if not terms:
        return attention[0].new_zeros(())
    return torch.stack(terms).mean()
