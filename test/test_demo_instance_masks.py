"""recipes.demo.instance_masks: the designs' masks from one answer, on the tiny model."""
import numpy as np
import pytest

from lens_model.answer_format import format_answer, to_reasoner_frame
from lens_model.predictor import LensPredictor
from model_fixtures import tiny_model
from recipes.demo import instance_masks
from stage_fixtures import synthetic_data
from training.data.registry import load_dataset


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = synthetic_data(tmp_path_factory.mktemp("syn"), images=12, seed=3, size=112)
    return instance_masks.several_referents(load_dataset("synthetic", root, "train"), 3)


def test_only_expressions_with_several_referents_are_compared(samples):
    assert len(samples) == 3 and all(len(s.instances) >= 2 for s in samples)


def test_designs_from_a_perfect_answer(samples, monkeypatch):
    """Answering the true boxes, the box-prompt design is its ceiling, and the predictor's union holds
    the LENS mask and SAM 2's masks of the later boxes."""
    predictor = LensPredictor(tiny_model())
    model = predictor.model
    sample = samples[0]
    encoded = model.encode_image(sample.image)
    boxes = [to_reasoner_frame(box, (sample.width, sample.height), encoded.resized_size) for box in sample.boxes]
    text = format_answer([(box, sample.text) for box in boxes], model.config.template)
    monkeypatch.setattr(model, "generate", lambda inputs, **_: model.encode_completions([text]))
    masks = instance_masks.design_masks(predictor, sample)
    np.testing.assert_array_equal(masks["box prompts only"], masks["box prompts, true boxes"])
    later = instance_masks.box_prompt_union(predictor, sample.image, sample.boxes[1:])
    np.testing.assert_array_equal(masks["lens + box prompts"], masks["lens only"] | later)
    scores = instance_masks.compare(predictor, [sample])
    assert scores["box prompts only"] == scores["box prompts, true boxes"] and set(scores) == set(instance_masks.DESIGNS)
