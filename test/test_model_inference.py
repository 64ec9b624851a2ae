"""End-to-end inference on the tiny model: image + query -> mask, box, reasoning, timings."""
import numpy as np
import pytest
import torch

from lens_model.config import LensConfig
from lens_model.errors import CheckpointFormatError, InputError
from model_fixtures import scene, tiny_model
from lens_model.predictor import LensPredictor


@pytest.fixture(scope="module")
def model():
    return LensPredictor(tiny_model())


def test_predict_returns_full_result(model):
    image = scene()
    result = model.predict(image, "the red square")
    assert result.mask.dtype == np.bool_ and result.mask.shape == image.shape[:2]
    assert 0.0 <= result.score <= 1.0
    assert result.random_weights is True
    assert isinstance(result.answer, str)
    assert (result.box is None) == (result.box_status != "ok")
    stages = {"preprocess", "vision_encoder", "sam_image_encoder", "generate", "query_pass", "mask_decoder", "postprocess"}
    assert stages <= set(result.timings_ms) and result.timings_ms["total"] > 0
    summary = result.to_dict()
    assert summary["mask_shape"] == [96, 128] and summary["query"] == "the red square"


def test_predict_many_matches_single_predictions(model):
    image = scene()
    queries = ["the red square", "the big blue rectangle on the right of the picture"]
    batch = model.predict_many(image, queries)
    for query, batched in zip(queries, batch):
        single = model.predict(image, query)
        assert batched.answer == single.answer
        agreement = (batched.mask == single.mask).mean()
        assert agreement > 0.999


def test_predict_many_shares_the_encoders(model, monkeypatch):
    calls = {"vision": 0, "sam": 0}
    vision, sam = model.model.vision_embeds, model.model.sam_features

    def count_vision(*a, **k):
        calls["vision"] += 1
        return vision(*a, **k)

    def count_sam(*a, **k):
        calls["sam"] += 1
        return sam(*a, **k)

    monkeypatch.setattr(model.model, "vision_embeds", count_vision)
    monkeypatch.setattr(model.model, "sam_features", count_sam)
    results = model.predict_many(scene(), ["a", "b", "c", "d"])
    assert len(results) == 4 and calls == {"vision": 1, "sam": 1}


def test_mask_follows_original_resolution_for_odd_sizes(model):
    image = scene(height=37, width=301)
    assert model.predict(image, "the red square").mask.shape == (37, 301)


@pytest.mark.parametrize("query", ["", "   ", "x" * 5000, None, b"\xff\xfe", "the \udcff mug"])
def test_bad_queries_raise_input_error(model, query):
    with pytest.raises(InputError):
        model.predict(scene(), query)


@pytest.mark.parametrize("image", [np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10), np.uint8),
                                   np.zeros((10, 10, 3), np.float32), "not an image"])
def test_bad_images_raise_input_error(model, image):
    with pytest.raises(InputError):
        model.predict(image, "the red square")


def rendered_prompt(predictor: LensPredictor, query: str, template: str | None) -> str:
    """The prompt text ``predict`` renders for ``query``."""
    captured = {}
    processor = predictor.model.processor
    render = processor.render

    def spy(*args):
        captured["text"] = render(*args)
        return captured["text"]

    processor.render = spy
    try:
        predictor.predict(scene(), query, template=template, max_new_tokens=4)
    finally:
        processor.render = render
    return captured["text"]


def test_reasoning_template_prompt_reaches_the_reasoner(model):
    text = rendered_prompt(model, "the red square", "reasoning")
    assert "<think>" in text and "the red square" in text


def test_custom_instruction_replaces_the_prompt_of_the_models_own_template():
    """A model trained with its own wording (``LensConfig.instruction``) is prompted with it; asked
    for the other template, it gets that template's built-in prompt."""
    model = LensPredictor(tiny_model(template="reasoning", instruction='Find "{query}".'))
    text = rendered_prompt(model, "the red square", None)
    assert 'Find "the red square".<|im_end|>' in text and "<think>" not in text
    assert "Output the bounding box of the the red square" in rendered_prompt(model, "the red square", "direct")


@pytest.mark.parametrize("instruction", ["Find it.", "Find {{query}}.", "Find {query} {other}", "Find {query} {"])
def test_instruction_without_exactly_the_query_field_is_rejected(instruction):
    with pytest.raises(CheckpointFormatError, match="instruction"):
        LensConfig(instruction=instruction)


def test_clean_variant_uses_all_queries_as_prompts():
    model = tiny_model(prompt_collapse="none", query_positions="mrope")
    states = torch.randn(2, model.config.num_queries, model.reasoner.config.text_config.hidden_size)
    prompts = model.context(states)
    assert prompts.shape == (2, model.config.num_queries, 256)
    result = LensPredictor(model).predict(scene(), "the blue rectangle")
    assert result.mask.shape == (96, 128)


@pytest.mark.parametrize("overrides", [{}, {"prompt_collapse": "none", "query_positions": "mrope"}])
def test_bfloat16_inference(overrides):
    """GPU users run in bf16 ("auto"); SAM 2's position encoding must keep working."""
    from lens_model.checkpoints import load_model

    model = load_model("tiny-random", dtype="bfloat16", **overrides)
    assert model.dtype == torch.bfloat16
    result = LensPredictor(model).predict(scene(), "the red square")
    assert result.mask.shape == (96, 128) and 0.0 <= result.score <= 1.0
