"""Training primitives: teacher-forced answers, one forward for log-probs + query states, group masks."""
import pytest
import torch

from lens_model.answer_format import format_answer, to_reasoner_frame
from lens_model.answer_parser import parse_answer
from model_fixtures import scene, tiny_model


@pytest.mark.parametrize("template", ["direct", "reasoning"])
def test_formatted_answers_parse_back(template):
    text = format_answer((10.4, 20.6, 50, 60), "red square", template, reasoning="Two squares; the red one.")
    parsed = parse_answer(text)
    assert parsed.box == (10, 21, 50, 60) and parsed.label == "red square"
    assert parsed.format_ok(template)


def test_box_into_reasoner_frame():
    assert to_reasoner_frame((10, 20, 30, 40), (100, 200), (50, 100)) == (5, 10, 15, 20)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(query_positions="mrope", prompt_collapse="none")
    encoded = model.encode_image(scene())
    prompts = model.encode_prompts(["the red square", "the blue one"], [encoded] * 2)
    grid = encoded.grid_thw.repeat(2, 1)
    vision = [model.vision_embeds(encoded).detach()] * 2
    texts = [format_answer((10, 20, 50, 60), "red square", "direct"), format_answer((1, 2, 3, 4), "x", "reasoning", "r")]
    return model, encoded, prompts, grid, vision, texts


def test_completion_encoding_ends_with_end_of_turn(setup):
    model, _, _, _, _, texts = setup
    ids, mask = model.encode_completions(texts)
    for row in range(2):
        last = int(mask[row].sum()) - 1
        assert ids[row, last].item() == model.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.processor.decode(ids[0, : int(mask[0].sum()) - 1].tolist()) == texts[0]


def test_answers_end_with_im_end_when_endoftext_also_ends_generation(setup):
    """In Qwen's own tokenizers <|endoftext|> (151643) is an end token listed before <|im_end|>
    (151645); a teacher-forced answer still ends the turn as the chat format does, with <|im_end|>."""
    model, _, _, _, _, texts = setup
    tokenizer = model.processor.tokenizer
    end_ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    original = model.processor.eos_token_ids
    model.processor.eos_token_ids = end_ids  # Qwen's order
    try:
        ids, mask = model.encode_completions(texts)
    finally:
        model.processor.eos_token_ids = original
    assert ids[0, int(mask[0].sum()) - 1].item() == end_ids[1]


@torch.no_grad()
@pytest.mark.parametrize("scheme", ["mrope", "sequential"])
def test_sequence_logprobs_equal_the_stock_forward(setup, scheme):
    """Log-probs follow generation's M-RoPE positions whatever the query-pass scheme, so SFT and GRPO
    train and score the distribution that generates."""
    import dataclasses

    model, encoded, prompts, grid, vision, texts = setup
    model.config = dataclasses.replace(model.config, query_positions=scheme)
    ids, mask = model.encode_completions(texts)
    logprobs, states = model.sequence_forward(prompts, grid, vision, ids, mask, with_logprobs=True)
    model.config = dataclasses.replace(model.config, query_positions="mrope")
    assert states.shape == (2, model.config.num_queries, 64)
    full_ids = torch.cat([prompts.input_ids, ids], 1)
    out = model.reasoner(
        input_ids=full_ids, attention_mask=torch.cat([prompts.attention_mask, mask], 1),
        mm_token_type_ids=torch.cat([prompts.mm_token_type_ids, torch.zeros_like(ids)], 1),
        pixel_values=torch.cat([encoded.pixel_values] * 2), image_grid_thw=grid,
    )
    start = prompts.input_ids.shape[1] - 1
    reference = torch.log_softmax(out.logits[:, start:-1].float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs * mask, reference * mask, atol=1e-4)


def test_gradients_reach_the_context_module_and_reasoner(setup):
    model, _, prompts, grid, vision, texts = setup
    ids, mask = model.encode_completions(texts)
    model.zero_grad()
    logprobs, states = model.sequence_forward(prompts, grid, vision, ids, mask, with_logprobs=True)
    features = model.sam_features([scene()])
    logits, _ = model.segment_groups(states, features, group_size=2)
    (logits.mean() - logprobs.sum()).backward()
    assert model.context.context_queries.grad.abs().sum() > 0
    assert model.context.connector.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.sam.sam_mask_decoder.output_upscaling[0].weight.grad.abs().sum() > 0
    assert model.reasoner.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    model.zero_grad()


@torch.no_grad()
def test_segment_groups_matches_per_image_decoding(setup):
    model = setup[0]
    states = torch.randn(4, model.config.num_queries, 64)
    features = model.sam_features([scene(seed=1), scene(seed=2)])
    grouped, _ = model.segment_groups(states, features, group_size=2)
    second, _ = model.segment(states[2:], features.select([1]), repeat_image=True)
    assert torch.allclose(grouped[2:], second, atol=1e-5)
