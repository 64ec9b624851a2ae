"""Attention grounding: target weights, the box's number tokens, the loss by hand, and SFT with it."""
import json

import numpy as np
import pytest
import torch

from lens_model.answer_format import format_answer
from lens_model.tiny import build_tiny_random
from stage_fixtures import run_stage, synthetic_data
from recipes.demo import grounding_attention as ga
from training.batches import BatchEncoder
from training.common.logging import read_metrics
from training.data.sample import Sample
from recipes.demo import sft as demo_sft


def _sample(box, mask_rows=None, size=8):
    mask = np.zeros((size, size), bool)
    if mask_rows is not None:
        mask[mask_rows] = True
    else:
        mask[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = True
    return Sample(np.zeros((size, size, 3), np.uint8), "x", mask, box, "i", "r", "s", "test")


def test_centre_target_is_the_token_holding_the_box_centre():
    size = (8, 8)
    assert ga.box_target(_sample((5, 1, 7, 3)).mask, (5, 1, 7, 3), size, (2, 2), "centre").tolist() == [0, 1, 0, 0]
    assert ga.box_target(_sample((0, 6, 8, 8)).mask, (0, 6, 8, 8), size, (2, 2), "centre").tolist() == [0, 0, 0, 1]
    # 2 rows x 4 columns: x 20 of 40 is column 2, y 99 of 100 row 1
    assert ga.point_target((20.0, 99.0), (40, 100), (2, 4)).tolist() == [0, 0, 0, 0, 0, 0, 1, 0]


def test_mask_target_spreads_over_the_tokens_by_mask_area():
    sample = _sample((0, 0, 8, 4), mask_rows=(slice(2, 4), slice(0, 8)))  # 2 rows across the top half
    sample.mask[4:5, 0:4] = True  # 4 more pixels in the bottom-left quarter
    weights = ga.box_target(sample.mask, sample.box, (8, 8), (2, 2), "mask")
    assert weights.tolist() == pytest.approx([8 / 20, 8 / 20, 4 / 20, 0.0])


def _digits(tokenizer, completion, positions):
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return "".join(tokenizer.decode([ids[i]]) for i in positions).replace(" ", "")


@pytest.mark.parametrize("template", ["reasoning", "direct"])
def test_the_answer_box_numbers_and_optionally_the_reasoning_points_are_grounded(template):
    tokenizer = build_tiny_random().processor.tokenizer
    box = (12.4, 30.0, 57.0, 101.0)
    completion = format_answer([(box, "the 2 red cups")], template, "Candidates at (12, 30) and (90, 4); 3 cups.")
    sample, size, grid = _sample((0, 0, 8, 8)), (112, 112), (4, 4)
    box_only = ga.completion_groundings(tokenizer, completion, [(box, sample.mask)], size, grid, ga.GroundingAttentionSection())
    assert len(box_only) == 1 and _digits(tokenizer, completion, box_only[0].positions) == "123057101"
    assert box_only[0].target.tolist() == ga.point_target((34.7, 65.5), size, grid).tolist()
    section = ga.GroundingAttentionSection(reasoning_points=True)
    groundings = ga.completion_groundings(tokenizer, completion, [(box, sample.mask)], size, grid, section)
    if template == "direct":  # no reasoning, no points
        assert len(groundings) == 1
        return
    assert [_digits(tokenizer, completion, g.positions) for g in groundings] == ["123057101", "1230", "904"]
    assert groundings[2].target.argmax().item() == 0 * 4 + 3  # (90, 4): top row, last column
    with pytest.raises(ValueError, match="does not contain its box"):
        ga.completion_groundings(tokenizer, completion, [((1, 2, 3, 4), sample.mask)], size, grid, section)


def test_the_words_describing_a_reasoning_point_are_grounded_with_it():
    tokenizer = build_tiny_random().processor.tokenizer
    box = (80.0, 0.0, 100.0, 8.0)
    reasoning = "Row by row, the image shows a large red cup at (12, 30) and the 2 cups at (90, 4); so the cup."
    completion = format_answer([(box, "cup")], "reasoning", reasoning)
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    section = ga.GroundingAttentionSection(reasoning_points=True)
    groundings = ga.completion_groundings(tokenizer, completion, [(box, _sample((0, 0, 8, 8)).mask)], (112, 112), (4, 4), section)
    described = "".join(tokenizer.decode([ids[i]]) for i in groundings[1].positions)
    assert described == " large red cup1230"  # the words and the numbers, not "a", "at" or the brackets
    assert _digits(tokenizer, completion, groundings[2].positions) == "904"  # "the 2 cups": no description


def test_loss_is_zero_on_the_target_and_log_n_when_uniform():
    prompt_ids = torch.tensor([[0, 7, 7, 7, 7, 1]])  # four image tokens (id 7) in a 6-token prompt
    on_two = ga.GroundedTokens([0, 1], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    on_zero = ga.GroundedTokens([2], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    sharp = torch.zeros(1, 9, 9)
    sharp[0, 5:7, 3] = 1.0  # the rows predicting completion tokens 0 and 1, on image token 2
    sharp[0, 7, 1] = 1.0  # and the row predicting token 2 on image token 0
    args = (prompt_ids, 7, [(2, 2)], [[on_two, on_zero]])
    assert ga.grounding_attention_loss([sharp], *args).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((1, 9, 9), 1 / 9)
    assert ga.grounding_attention_loss([uniform, uniform], *args).item() == pytest.approx(np.log(9), rel=1e-5)
    assert ga.grounding_attention_loss([sharp], prompt_ids, 7, [(2, 2)], [[]]).item() == 0.0
    with pytest.raises(ValueError, match="image tokens for a 3x3 grid"):
        ga.grounding_attention_loss([uniform], prompt_ids, 7, [(3, 3)], [[on_two]])


def test_attention_modules_are_found_by_layer():
    model = build_tiny_random()
    layers = model.reasoner.config.text_config.num_hidden_layers
    modules = ga.attention_modules(model.reasoner, [-1, 0])
    assert modules[0] is model.reasoner.model.language_model.layers[layers - 1].self_attn
    assert modules[1] is model.reasoner.model.language_model.layers[0].self_attn
    with pytest.raises(ValueError, match="out of range"):
        ga.attention_modules(model.reasoner, [layers])


def _eager_weights(module, head):
    """The module's own probabilities for ``head`` (eager attention returns them)."""
    kept = []
    handle = module.register_forward_hook(lambda _m, _i, output: kept.append(output[1][:, head]))
    return kept, handle


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_recorded_head_probabilities_are_the_models_own(implementation):
    """Recomputed from the layer's inputs, they equal eager attention's probabilities for that head,
    whichever implementation the model runs, on a padded batch (completions of different lengths)."""
    model = build_tiny_random()
    model.eval()
    rng = np.random.default_rng(0)
    samples = [Sample(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8), text, np.ones((56, 56), bool), (4, 6, 30, 40),
                      f"i{k}", "r", "s", "test") for k, text in enumerate(["the red circle", "a cup"])]
    batch = BatchEncoder(model, 0, False, False).encode(samples, model.config.template, with_sam_features=False)
    answers = model.encode_completions(["<think>x</think>short", "<think>a longer one (3, 4)</think>[1, 2]"])
    mask = answers.attention
    assert not mask.all()  # the first completion is padded
    module, head = ga.attention_modules(model.reasoner, [-1])[0], 1

    def forward():
        model(batch.inputs, answers, return_logprobs=True)

    model.reasoner.set_attn_implementation("eager")
    expected, handle = _eager_weights(module, head)
    with torch.no_grad():
        forward()
    handle.remove()
    model.reasoner.set_attn_implementation(implementation)
    with torch.no_grad(), ga.recorded_attention([module], head) as recorded:
        forward()
    real = torch.cat([batch.inputs.prompts.attention_mask, mask], 1).bool()  # rows of real tokens
    assert recorded[0].shape == expected[0].shape
    torch.testing.assert_close(recorded[0][:, :real.shape[1]][real], expected[0][:, :real.shape[1]][real], atol=1e-5, rtol=1e-4)
    other_head, handle = _eager_weights(module, 0)
    model.reasoner.set_attn_implementation("eager")
    with torch.no_grad():
        forward()
    handle.remove()
    assert not torch.allclose(recorded[0], other_head[0], atol=1e-3)  # it is that head, not any head
    with pytest.raises(ValueError, match="head 9 is out of range"), torch.no_grad(), ga.recorded_attention([module], 9):
        forward()
    hidden = torch.zeros(2, 5, module.q_proj.in_features)
    for wrong in (torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 1, 5, 7, dtype=torch.bool)):  # padding only; a KV cache
        with pytest.raises(ValueError, match=r"\(B, 1, 5, 5\) attention mask"):
            ga.head_probabilities(module, hidden, None, wrong, head)


def test_config_refuses_a_negative_weight_and_an_unknown_target():
    with pytest.raises(ValueError, match="weight"):
        ga.GroundingAttentionSection(weight=-1)
    with pytest.raises(ValueError, match="target"):
        ga.GroundingAttentionSection(target="edge")


def test_sft_with_grounding_attention_points_the_head_at_the_target(tmp_path_factory, tmp_path):
    data_root = synthetic_data(tmp_path_factory.mktemp("syn"), images=10, seed=5, size=112)
    run_stage(demo_sft.main, "training/configs/sft_tiny.yaml", data_root, tmp_path / "out", "data.eval_limit=0",
              "max_steps=30", "log.every_steps=5", "engine.lr=1e-2", "grounding_attention.weight=1.0",
              "grounding_attention.reasoning_points=true")
    records = [r for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if "grounding_attention" in r]
    assert len(records) == 6
    first, last = records[0]["grounding_attention"], records[-1]["grounding_attention"]
    assert last < 0.5 * first  # the head learns to look at the target's token
    assert all(r["loss"] == pytest.approx(r["completion_nll"] + r["grounding_attention"], rel=1e-4) for r in records)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "eager" not in json.dumps(config)  # the model keeps its attention implementation


def test_every_box_of_several_is_grounded_and_the_no_target_answer_grounds_the_reasoning_only():
    tokenizer = build_tiny_random().processor.tokenizer
    boxes = [(0.0, 0.0, 20.0, 20.0), (80.0, 60.0, 100.0, 90.0)]
    reasoning = "Row by row, the image shows a small red cup at (10, 10) and a large red cup at (90, 75)."
    section, size, grid = ga.GroundingAttentionSection(reasoning_points=True), (112, 112), (4, 4)
    masks = [_sample(box, size=112).mask for box in boxes]
    completion = format_answer([(box, "all the cups") for box in boxes], "reasoning", reasoning)
    groundings = ga.completion_groundings(tokenizer, completion, list(zip(boxes, masks)), size, grid, section)
    assert [_digits(tokenizer, completion, g.positions) for g in groundings[:2]] == ["002020", "806010090"]
    assert groundings[0].target.argmax().item() == 0 and groundings[1].target.argmax().item() == 2 * 4 + 3
    assert len(groundings) == 4  # the two boxes, then the two points of the reasoning
    nothing = format_answer([], "reasoning", reasoning)
    groundings = ga.completion_groundings(tokenizer, nothing, [], size, grid, section)
    assert len(groundings) == 2 and [g.target.argmax().item() for g in groundings] == [0, 2 * 4 + 3]
