"""A released checkpoint decodes as the authors' ``generate(do_sample=False, ...)`` does: with its
generation_config.json merged in (repetition penalty, end ids), under its length cap, and with the
vision placeholders suppressed only where the authors' pipeline could not go on."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GenerationConfig as HFGenerationConfig
from transformers import RepetitionPenaltyLogitsProcessor

from lens_model.config import ConnectorConfig, GenerationConfig
from lens_model.decoding import generate_kwargs
from lens_model.errors import CheckpointFormatError, InputError
from lens_model.generation_file import read_generation_file
from lens_model.checkpoints import save_model, load_model
from model_fixtures import scene, tiny_model
from released_layout import released_generation_config, write_released_checkpoint


def tiny_overrides(model) -> dict:
    """The tiny model's SAM 2 and resolution (a released config implies SAM 2-L at 1024 px)."""
    c = model.config
    return dict(sam2_config=c.sam2_config, sam2_overrides=c.sam2_overrides, sam_image_size=c.sam_image_size,
                min_pixels=c.min_pixels, max_pixels=c.max_pixels)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(connector=ConnectorConfig(depth=4, num_heads=16))


def released(tiny, directory, penalty=1.05, **generation):
    write_released_checkpoint(tiny, directory, include_lm_head=False,
                              generation={**released_generation_config(tiny, penalty), **generation})
    return load_model(str(directory), **tiny_overrides(tiny))


def recorded(config):
    """A config without the embedded architecture descriptions (re-saving normalises those)."""
    return dataclasses.replace(config, reasoner_config=None, sam2_model_config=None)


def inputs(model, query="the red square"):
    encoded = model.encode_image(scene())
    reasoner_inputs = model.encode_inputs([query], [encoded], [model.vision_embeds(encoded)])
    return encoded, reasoner_inputs.prompts, reasoner_inputs


def authors_generate(model, directory, encoded, prompts, **kwargs):
    """The authors' call: plain Hugging Face generate on a model whose generation config is the
    folder's (as ``from_pretrained`` leaves it), so transformers merges it in."""
    reasoner, own = model.reasoner, model.reasoner.generation_config
    reasoner.generation_config = HFGenerationConfig.from_pretrained(directory)
    try:
        return reasoner.generate(
            input_ids=prompts.input_ids, attention_mask=prompts.attention_mask,
            mm_token_type_ids=prompts.mm_token_type_ids, pixel_values=encoded.pixel_values,
            image_grid_thw=encoded.grid_thw, do_sample=False, use_cache=True, return_dict_in_generate=True,
            output_scores=True, output_logits=True, **kwargs)
    finally:
        reasoner.generation_config = own


def test_generation_config_is_recorded_and_round_trips(tiny, tmp_path):
    model = released(tiny, tmp_path / "LENS")
    ids = model.processor.tokenizer.convert_tokens_to_ids
    assert model.config.generation.repetition_penalty == 1.05
    assert model.config.generation.eos_token_ids == [ids("<|im_end|>"), ids("<|endoftext|>")]
    save_model(model, str(tmp_path / "native"))
    assert recorded(load_model(str(tmp_path / "native")).config) == recorded(model.config)


@pytest.mark.parametrize("penalty", [1.05, 3.0])
def test_repetition_penalty_decodes_exactly_as_hugging_face_greedy_search(tiny, tmp_path, penalty):
    directory = tmp_path / "LENS"
    model = released(tiny, directory, penalty)
    encoded, prompts, vision = inputs(model)
    ours = model.generate(vision, max_new_tokens=24)
    theirs = authors_generate(model, directory, encoded, prompts, max_new_tokens=24)
    length = prompts.input_ids.shape[1]
    tokens = ours.ids[0][ours.attention[0].bool()]
    assert torch.equal(tokens, theirs.sequences[0, length:])
    # Every step's scores are the raw logits through transformers' own repetition penalty.
    penalize = RepetitionPenaltyLogitsProcessor(penalty)
    for step, (scores, logits) in enumerate(zip(theirs.scores, theirs.logits)):
        assert torch.equal(scores, penalize(theirs.sequences[:, :length + step], logits.clone()))
    assert not torch.equal(theirs.scores[0], theirs.logits[0])  # the prompt's tokens are penalised already
    without = model.generate(vision, max_new_tokens=24, repetition_penalty=1.0)
    if penalty == 3.0:  # the control: this penalty changes the tiny model's answer
        assert not torch.equal(without.ids, ours.ids)


def test_length_cap_counts_prompt_and_answer_as_max_length_does(tiny, tmp_path):
    directory = tmp_path / "LENS_ReasonSeg_FT"  # the profile caps prompt + answer at 768 tokens
    model = released(tiny, directory)
    assert (model.config.generation.max_length, model.config.generation.max_new_tokens) == (768, 768)
    encoded, prompts, vision = inputs(model)
    length = prompts.input_ids.shape[1]
    model.config.generation.max_length = length + 5
    ours = model.generate(vision, min_new_tokens=5)
    theirs = authors_generate(model, directory, encoded, prompts, max_length=length + 5, min_new_tokens=5)
    assert ours.ids.shape[1] == 5 and torch.equal(ours.ids[0], theirs.sequences[0, length:])
    model.config.generation.max_length = length
    with pytest.raises(InputError, match="caps prompt \\+ answer"):
        model.generate(vision)
    assert model.generate(vision, max_new_tokens=2).ids.shape[1] <= 2


def test_generate_kwargs():
    gen = GenerationConfig(max_new_tokens=256, max_length=768, repetition_penalty=1.05)
    assert generate_kwargs(gen, 700, [9])["max_new_tokens"] == 68
    assert generate_kwargs(gen, 100, [9])["max_new_tokens"] == 256  # whichever cap comes first
    assert generate_kwargs(gen, 900, [9], max_new_tokens=10)["max_new_tokens"] == 10  # explicit wins
    settings = generate_kwargs(GenerationConfig(), 900, [9])
    assert settings["max_new_tokens"] == 256 and settings["suppress_tokens"] == [9] and settings["temperature"] is None
    assert "suppress_tokens" not in generate_kwargs(GenerationConfig(suppress_placeholders=False), 9, [9])


@pytest.mark.parametrize("fields, message", [
    ({"num_beams": 4}, "num_beams"),
    ({"custom_generate": "evil/repo"}, "custom_generate"),
    ({"watermarking_config": {"greenlist_ratio": 0.25}}, "watermarking_config"),
    ({"stop_strings": ["</answer>"]}, "stop_strings"),
    ({"repetition_penalty": "1.05"}, "repetition_penalty must be a finite number"),
    ({"repetition_penalty": 1e9}, "repetition_penalty must lie in"),
    ({"eos_token_id": [True]}, "must be an integer"),
    ({"eos_token_id": 10**6}, "outside the vocabulary"),
])
def test_generation_config_is_data(tiny, tmp_path, fields, message):
    with pytest.raises(CheckpointFormatError, match=message) as error:
        released(tiny, tmp_path / "LENS", **fields)
    assert "\n" not in str(error.value)


def test_neutral_and_ignored_generation_fields_load(tiny, tmp_path):
    model = released(tiny, tmp_path / "LENS", num_beams=1, max_length=32768, do_sample=True, no_repeat_ngram_size=3)
    assert model.config.generation.no_repeat_ngram_size == 3 and model.config.generation.do_sample is False
    (tmp_path / "LENS" / "generation_config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointFormatError, match="JSON object"):
        load_model(str(tmp_path / "LENS"), **tiny_overrides(tiny))


def test_placeholders_are_suppressed_only_where_the_authors_pipeline_fails(tiny, tmp_path):
    """Greedy search picks a vision placeholder only when it is the argmax; then the authors' mask pass,
    which re-runs the vision tower on prompt + answer, has one image token too many and fails. So the
    suppression never changes an output the authors' pipeline produces."""
    directory = tmp_path / "LENS"
    model = released(tiny, directory)
    encoded, prompts, vision = inputs(model)
    before = model.generate(vision, max_new_tokens=6)
    # Make <|image_pad|> the argmax at the first step: its (tied, output-only) embedding row becomes a
    # scaled copy of the first answer token's.
    pad = model.processor.image_token_id
    weights = model.reasoner.get_input_embeddings().weight
    with torch.no_grad():
        weights[pad] = 100 * weights[before.ids[0, 0]]
    suppressed = model.generate(vision, max_new_tokens=6)
    assert torch.equal(suppressed.ids, before.ids)  # nothing else changes
    theirs = authors_generate(model, directory, encoded, prompts, max_new_tokens=6).sequences
    assert theirs[0, prompts.input_ids.shape[1]] == pad
    with pytest.raises(ValueError, match="[Ii]mage features and image tokens do not match"):
        model.reasoner(input_ids=theirs, attention_mask=torch.ones_like(theirs), pixel_values=encoded.pixel_values,
                       image_grid_thw=encoded.grid_thw, mm_token_type_ids=(theirs == pad).long())


def test_old_configs_without_the_new_fields_load_with_todays_behaviour(tmp_path):
    model = tiny_model()
    save_model(model, str(tmp_path / "m"))
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    for key in ("preprocessing", "profile"):
        del data[key]
    for key in ("max_length", "no_repeat_ngram_size", "eos_token_ids", "suppress_placeholders"):
        del data["generation"][key]
    path.write_text(json.dumps(data))
    loaded = load_model(str(tmp_path / "m"))
    assert recorded(loaded.config) == recorded(model.config) and loaded.config.profile == ""
    assert loaded.eos_token_ids == model.processor.eos_token_ids


@settings(max_examples=150, deadline=None, derandomize=True)
@given(field=st.sampled_from(["repetition_penalty", "eos_token_id", "no_repeat_ngram_size", "num_beams", "do_sample",
                              "custom_generate", "max_length", "x"]),
       value=st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                          max_leaves=8))
def test_any_value_in_generation_config_json_loads_or_is_one_line(tmp_path_factory, field, value):
    directory = tmp_path_factory.mktemp("gen")
    (directory / "generation_config.json").write_text(json.dumps({field: value}))
    try:
        fields = read_generation_file(directory)
    except CheckpointFormatError as exc:
        assert "\n" not in str(exc)
        return
    GenerationConfig(**fields)  # what is taken is a valid setting
