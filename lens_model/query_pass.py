"""The query pass: append the M context queries after prompt + completion and read their states.

Two position schemes (``LensConfig.query_positions``):

* ``"sequential"`` — what the authors' released checkpoints were trained with: the pass runs on
  ``inputs_embeds`` with plain 1-D positions ``cumsum(attention_mask) - 1`` on all three M-RoPE
  axes, image tokens included. Generation used 3-D M-RoPE, so its KV cache cannot be reused and
  the whole sequence is re-run (:func:`full_query_pass`). The vision tower is not re-run: its
  features are passed in, and no LM-head logits are computed unless asked for.
* ``"mrope"`` — the cleaner variant: the queries continue the generation's M-RoPE positions, so the
  pass reuses the generation's KV cache and only runs the last generated token plus the M queries
  (:func:`cached_query_pass`). :func:`full_query_pass` with ``"mrope"`` gives the same states
  (used in training, where log-probs of the completion are needed anyway).

Hidden states are the last decoder layer after the final RMSNorm (what the LM head reads).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lens_model.processor import EncodedPrompts


@dataclass
class QueryPassOutput:
    query_states: torch.Tensor  # (B, M, C)
    sequence_hidden: torch.Tensor | None  # (B, L+T, C) states of prompt + completion, when asked for


def completion_mask(completion_ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 for completion tokens up to and including the first end-of-sequence token, 0 after it."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).long()


def sequential_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """1-D positions (count of attended tokens before each token) copied to the 3 M-RoPE axes."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return positions.unsqueeze(0).expand(3, -1, -1)


def mrope_positions(reasoner, input_ids: torch.Tensor, mm_types: torch.Tensor, grid_thw: torch.Tensor,
                    attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D M-RoPE positions (3, B, S) and per-row deltas (B, 1), as generation computes them."""
    return reasoner.model.get_rope_index(
        input_ids, mm_token_type_ids=mm_types, image_grid_thw=grid_thw, attention_mask=attention_mask
    )


def embed_sequence(reasoner, input_ids: torch.Tensor, image_positions: torch.Tensor, vision_embeds: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the image placeholders replaced by precomputed vision features.

    ``image_positions`` marks the prompt's image tokens (its ``mm_token_type_ids``); a placeholder id
    that a sampled completion happens to contain is left as an ordinary token.
    """
    embeds = reasoner.get_input_embeddings()(input_ids)
    image_mask = image_positions.bool().unsqueeze(-1).expand_as(embeds)
    return embeds.masked_scatter(image_mask, vision_embeds.to(embeds.dtype))


def full_query_pass(
    reasoner,
    prompts: EncodedPrompts,
    grid_thw: torch.Tensor,
    vision_embeds: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_attention: torch.Tensor,
    queries: torch.Tensor,
    pad_token_id: int,
    scheme: str,
    return_sequence_hidden: bool = False,
) -> QueryPassOutput:
    """One forward over prompt + completion + M queries (no KV cache)."""
    batch, num_queries = completion_ids.shape[0], queries.shape[1]
    ids = torch.cat([prompts.input_ids, completion_ids], dim=1)
    mask = torch.cat([prompts.attention_mask, completion_attention], dim=1)
    image_positions = torch.cat([prompts.mm_token_type_ids, torch.zeros_like(completion_ids)], dim=1)
    embeds = embed_sequence(reasoner, ids, image_positions, vision_embeds)
    embeds = torch.cat([embeds, queries.to(embeds.dtype).expand(batch, -1, -1)], dim=1)
    query_ones = mask.new_ones(batch, num_queries)
    full_mask = torch.cat([mask, query_ones], dim=1)
    if scheme == "sequential":
        positions = sequential_positions(full_mask)
    else:
        ids_with_queries = torch.cat([ids, query_ones * pad_token_id], dim=1)
        mm_types = torch.cat([image_positions, query_ones * 0], dim=1)
        positions, _ = mrope_positions(reasoner, ids_with_queries, mm_types, grid_thw, full_mask)
    out = reasoner.model.language_model(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, use_cache=False)
    hidden = out.last_hidden_state
    return QueryPassOutput(hidden[:, -num_queries:], hidden[:, :-num_queries] if return_sequence_hidden else None)


def cached_query_pass(
    reasoner,
    prompts: EncodedPrompts,
    completion_ids: torch.Tensor,
    completion_attention: torch.Tensor,
    cache,
    rope_deltas: torch.Tensor,
    queries: torch.Tensor,
) -> torch.Tensor:
    """M-RoPE query pass that reuses generation's KV cache (prompt + all but the last generated token).

    Runs only the last generated token and the M queries. Tokens after a row's end of sequence are
    masked out, so every row's queries follow its own last real token, as in :func:`full_query_pass`.
    """
    batch, num_queries = completion_ids.shape[0], queries.shape[1]
    last_token = reasoner.get_input_embeddings()(completion_ids[:, -1:])
    embeds = torch.cat([last_token, queries.to(last_token.dtype).expand(batch, -1, -1)], dim=1)
    full_mask = torch.cat([prompts.attention_mask, completion_attention, completion_attention.new_ones(batch, num_queries)], dim=1)
    deltas = rope_deltas.repeat_interleave(batch // rope_deltas.shape[0], dim=0).to(full_mask.device)
    positions = ((full_mask.cumsum(-1) - 1).clamp(min=0) + deltas)[:, -(num_queries + 1):]
    positions = positions.unsqueeze(0).expand(3, -1, -1)
    out = reasoner.model.language_model(
        inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, past_key_values=cache, use_cache=True
    )
    return out.last_hidden_state[:, -num_queries:]
