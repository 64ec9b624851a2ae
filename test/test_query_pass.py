"""The query pass: KV-cache reuse equals a full re-forward; the released 1-D position scheme."""
import torch

from lens_model.query_pass import cached_query_pass, completion_mask, full_query_pass, sequential_positions
from model_fixtures import scene, tiny_model


def test_sequential_positions_match_the_released_scheme():
    # The authors' example: [3 text, vision_start, 4 image, vision_end, 3 text] + 64 queries.
    mask = torch.ones(1, 12 + 64, dtype=torch.long)
    positions = sequential_positions(mask)
    assert positions.shape == (3, 1, 76)
    assert torch.equal(positions[:, 0], torch.arange(76).expand(3, -1))


def test_sequential_positions_skip_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 1]])
    assert sequential_positions(mask)[0, 0].tolist() == [0, 0, 0, 1, 2, 2, 3]


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 0], [5, 6, 7, 8, 9]])
    assert completion_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def _setup(model, queries):
    encoded = model.encode_image(scene())
    inputs = model.encode_inputs(queries, [encoded] * len(queries), [model.vision_embeds(encoded)] * len(queries))
    return inputs, inputs.prompts, inputs.grid_thw, inputs.vision


@torch.no_grad()
def test_kv_reuse_equals_full_reforward_after_generate():
    model = tiny_model(query_positions="mrope", prompt_collapse="none")
    inputs, prompts, grid, vision = _setup(model, ["the red square", "a longer query about the blue rectangle at the right"])
    completions = model.generate(inputs, keep_cache=True, max_new_tokens=10)
    cached = model(inputs, completions, return_query_states=True).query_states
    full = full_query_pass(
        model.reasoner, prompts, grid, torch.cat(vision), completions.ids, completions.attention,
        model.context.context_queries, model.processor.pad_token_id, "mrope",
    ).query_states
    assert torch.allclose(cached, full, atol=1e-5)


@torch.no_grad()
def test_kv_reuse_masks_tokens_after_an_early_end_of_sequence():
    """Rows that stop early carry padding in the cache; their queries must ignore it."""
    model = tiny_model(query_positions="mrope", prompt_collapse="none")
    _, prompts, grid, vision = _setup(model, ["the red square", "the blue rectangle"])
    eos, pad = model.processor.eos_token_ids[0], model.processor.pad_token_id
    completion = torch.tensor([[40, 41, eos, pad, pad, pad], [50, 51, 52, 53, 54, eos]])
    attention = completion_mask(completion, model.processor.eos_token_ids)
    # Rebuild the cache exactly as generation leaves it: every token attended (mask 1), M-RoPE positions.
    ids = torch.cat([prompts.input_ids, completion[:, :-1]], dim=1)
    gen_mask = torch.cat([prompts.attention_mask, torch.ones_like(completion[:, :-1])], dim=1)
    types = torch.cat([prompts.mm_token_type_ids, torch.zeros_like(completion[:, :-1])], dim=1)
    positions, deltas = model.reasoner.model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grid, attention_mask=gen_mask)
    from lens_model.query_pass import embed_sequence
    embeds = embed_sequence(model.reasoner, ids, types, torch.cat(vision))
    out = model.reasoner.model.language_model(inputs_embeds=embeds, attention_mask=gen_mask, position_ids=positions, use_cache=True)
    cached = cached_query_pass(model.reasoner, prompts, completion, attention, out.past_key_values, deltas, model.context.context_queries)
    full = full_query_pass(
        model.reasoner, prompts, grid, torch.cat(vision), completion, attention, model.context.context_queries,
        pad, "mrope",
    ).query_states
    assert torch.allclose(cached, full, atol=1e-5)
    # And the padding really is ignored: changing it changes nothing.
    other = completion.clone()
    other[0, 3:] = 60
    full_other = full_query_pass(
        model.reasoner, prompts, grid, torch.cat(vision), other, attention, model.context.context_queries,
        pad, "mrope",
    ).query_states
    assert torch.allclose(full, full_other, atol=1e-6)


@torch.no_grad()
def test_sequential_scheme_differs_from_mrope():
    model = tiny_model()
    inputs, prompts, grid, vision = _setup(model, ["the red square"])
    completions = model.generate(inputs, max_new_tokens=4)
    args = (model.reasoner, prompts, grid, torch.cat(vision), completions.ids, completions.attention,
            model.context.context_queries, model.processor.pad_token_id)
    seq = full_query_pass(*args, "sequential").query_states
    mrope = full_query_pass(*args, "mrope").query_states
    assert not torch.allclose(seq, mrope, atol=1e-4)
