"""Training primitives: teacher-forced answers, one forward for log-probs + query states, group masks."""
import pytest
import torch

from lens_model.answer_format import format_answer, to_reasoner_frame
from lens_model.answer_parser import parse_answer
from lens_model.modeling import LensOutput
from model_fixtures import scene, tiny_model


@pytest.mark.parametrize("template", ["direct", "reasoning"])
def test_formatted_answers_parse_back(template):
    text = format_answer([((10.4, 20.6, 50, 60), "red square")], template, reasoning="Two squares; the red one.")
    parsed = parse_answer(text)
    assert parsed.box == (10, 21, 50, 60) and parsed.label == "red square"
    assert parsed.format_ok(template)


def test_box_into_reasoner_frame():
    assert to_reasoner_frame((10, 20, 30, 40), (100, 200), (50, 100)) == (5, 10, 15, 20)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(query_positions="mrope", prompt_collapse="none")
    encoded = model.encode_image(scene())
    vision = model.vision_embeds(encoded).detach()
    inputs = model.encode_inputs(["the red square", "the blue one"], [encoded] * 2, [vision] * 2)
    texts = [format_answer([((10, 20, 50, 60), "red square")], "direct"), format_answer([((1, 2, 3, 4), "x")], "reasoning", "r")]
    return model, encoded, inputs, texts


def test_completion_encoding_ends_with_end_of_turn(setup):
    model, _, _, texts = setup
    answers = model.encode_completions(texts)
    for row in range(2):
        last = int(answers.attention[row].sum()) - 1
        assert answers.ids[row, last].item() == model.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.processor.decode(answers.ids[0, : int(answers.attention[0].sum()) - 1].tolist()) == texts[0]


def test_answers_end_with_im_end_when_endoftext_also_ends_generation(setup):
    """In Qwen's own tokenizers <|endoftext|> (151643) is an end token listed before <|im_end|>
    (151645); a teacher-forced answer still ends the turn as the chat format does, with <|im_end|>."""
    model, _, _, texts = setup
    tokenizer = model.processor.tokenizer
    end_ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    original = model.processor.eos_token_ids
    model.processor.eos_token_ids = end_ids  # Qwen's order
    try:
        answers = model.encode_completions(texts)
    finally:
        model.processor.eos_token_ids = original
    assert answers.ids[0, int(answers.attention[0].sum()) - 1].item() == end_ids[1]


@torch.no_grad()
@pytest.mark.parametrize("scheme", ["mrope", "sequential"])
def test_forward_logprobs_equal_the_stock_forward(setup, scheme):
    """Log-probs follow generation's M-RoPE positions whatever the query-pass scheme, so SFT and GRPO
    train and score the distribution that generates."""
    import dataclasses

    model, encoded, inputs, texts = setup
    model.config = dataclasses.replace(model.config, query_positions=scheme)
    answers = model.encode_completions(texts)
    out = model(inputs, answers, return_logprobs=True, return_query_states=True)
    model.config = dataclasses.replace(model.config, query_positions="mrope")
    assert isinstance(out, LensOutput) and out.mask_logits is None
    assert out.query_states.shape == (2, model.config.num_queries, 64)
    prompts, ids, mask = inputs.prompts, answers.ids, answers.attention
    reference_out = model.reasoner(
        input_ids=torch.cat([prompts.input_ids, ids], 1), attention_mask=torch.cat([prompts.attention_mask, mask], 1),
        mm_token_type_ids=torch.cat([prompts.mm_token_type_ids, torch.zeros_like(ids)], 1),
        pixel_values=torch.cat([encoded.pixel_values] * 2), image_grid_thw=inputs.grid_thw,
    )
    start = prompts.input_ids.shape[1] - 1
    reference = torch.log_softmax(reference_out.logits[:, start:-1].float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(out.logprobs * mask, reference * mask, atol=1e-4)


def test_gradients_reach_the_context_module_and_reasoner(setup):
    model, _, inputs, texts = setup
    model.zero_grad()
    out = model(inputs, model.encode_completions(texts), model.sam_features([scene()]), rows_per_image=2,
                return_logprobs=True)
    assert out.mask_logits.shape[0] == 2 and out.iou_predictions.shape == (2,)
    (out.mask_logits.mean() - out.logprobs.sum()).backward()
    assert model.context.context_queries.grad.abs().sum() > 0
    assert model.context.connector.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.sam.sam_mask_decoder.output_upscaling[0].weight.grad.abs().sum() > 0
    assert model.reasoner.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    model.zero_grad()


@torch.no_grad()
def test_rows_sharing_an_image_decode_as_that_image_alone(setup):
    """``rows_per_image``: rows 2 and 3 of four on two images get the masks of their image alone."""
    model, _, inputs, texts = setup
    answers = model.encode_completions(texts)
    states = torch.randn(4, model.config.num_queries, 64)
    features = model.sam_features([scene(seed=1), scene(seed=2)])
    grouped = model(inputs, answers, features, rows_per_image=2, query_states=states).mask_logits
    second = model(inputs, answers, features.select([1]), rows_per_image=2, query_states=states[2:]).mask_logits
    assert torch.allclose(grouped[2:], second, atol=1e-5)


@torch.no_grad()
def test_one_image_per_row(setup):
    model, _, inputs, texts = setup
    states = torch.randn(2, model.config.num_queries, 64)
    features = model.sam_features([scene(seed=1), scene(seed=2)])
    both = model(inputs, model.encode_completions(texts), features, query_states=states).mask_logits
    first = model(inputs, model.encode_completions(texts), features.select([0]), rows_per_image=1,
                  query_states=states[:1]).mask_logits
    assert torch.allclose(both[:1], first, atol=1e-5)
