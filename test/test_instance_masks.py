"""Instance masks: the first object's mask is the LENS mask, bit for bit as before answers could name
several objects; the others come from SAM 2's box prompts; the answer [] gives an empty mask."""
import numpy as np
import pytest
import torch

from lens_model import sam_head
from lens_model.answer_format import format_answer
from lens_model.answer_parser import map_box
from lens_model.predictor import LensPredictor
from model_fixtures import scene, tiny_model

BOXES = [(4.0, 6.0, 40.0, 50.0), (60.0, 10.0, 100.0, 40.0), (20.0, 60.0, 70.0, 90.0)]


@pytest.fixture(scope="module")
def predictor():
    return LensPredictor(tiny_model())


def _answering(predictor, monkeypatch, text):
    """The model answers ``text`` whatever it is asked (teacher-forced, as alignment runs it)."""
    model = predictor.model
    monkeypatch.setattr(model, "generate", lambda inputs, **_: model.encode_completions([text] * len(inputs.vision)))


@torch.inference_mode()
def _lens_mask(predictor, image, query, text):
    """The LENS mask computed step by step, as the predictor did when it knew one box only."""
    model = predictor.model
    encoded = model.encode_image(image)
    inputs = model.encode_inputs([query], [encoded], [model.vision_embeds(encoded)])
    features = model.sam_features([image])
    completions = model.encode_completions([text])
    states = model(inputs, completions, return_query_states=True).query_states
    out = model(inputs, completions, features, rows_per_image=1, query_states=states)
    logits = sam_head.upsample_logits(out.mask_logits, *image.shape[:2])
    return (logits > model.config.mask_threshold).cpu().numpy()[0], float(out.iou_predictions[0]), encoded, features


def test_a_one_box_answer_gives_the_lens_mask_unchanged(predictor, monkeypatch):
    image, query = scene(), "the red square"
    text = format_answer([(BOXES[0], query)], predictor.model.config.template, "one")
    _answering(predictor, monkeypatch, text)
    expected, iou, _, _ = _lens_mask(predictor, image, query, text)
    result = predictor.predict(image, query)
    assert result.status == "ok" and len(result.instances) == 1
    np.testing.assert_array_equal(result.mask, expected)
    assert result.instances[0].mask is result.mask and result.score == min(max(iou, 0.0), 1.0)


def test_several_boxes_give_one_mask_each_and_their_union(predictor, monkeypatch):
    image, query = scene(), "all the shapes"
    text = format_answer([(box, query) for box in BOXES], predictor.model.config.template, "three")
    _answering(predictor, monkeypatch, text)
    first, _, encoded, features = _lens_mask(predictor, image, query, text)
    result = predictor.predict(image, query)
    original = (image.shape[1], image.shape[0])
    boxes = [map_box(box, encoded.resized_size, original) for box in BOXES]
    assert [i.box for i in result.instances] == boxes and result.box == boxes[0]
    np.testing.assert_array_equal(result.instances[0].mask, first)
    with torch.inference_mode():
        logits, iou = predictor.model.box_masks(features, boxes[1:], original, [0, 0])
    later = (sam_head.upsample_logits(logits, *image.shape[:2]) > predictor.model.config.mask_threshold).numpy()
    for instance, mask, score in zip(result.instances[1:], later, iou.tolist()):
        np.testing.assert_array_equal(instance.mask, mask)
        assert instance.score == pytest.approx(min(max(score, 0.0), 1.0)) and instance.label == query
    np.testing.assert_array_equal(result.mask, first | later[0] | later[1])
    assert result.to_dict()["status"] == "ok" and len(result.to_dict()["instances"]) == 3


def test_the_no_target_answer_gives_an_empty_mask_and_no_instances(predictor, monkeypatch):
    text = format_answer([], predictor.model.config.template, "nothing")
    _answering(predictor, monkeypatch, text)
    assert _lens_mask(predictor, scene(), "the purple star", text)[0].any()  # which must not leak out
    result = predictor.predict(scene(), "the purple star")
    assert result.status == "no_target" and result.instances == [] and result.box is None
    assert result.mask.shape == (96, 128) and not result.mask.any()


def test_an_answer_without_a_box_keeps_the_lens_mask(predictor, monkeypatch):
    image, query, text = scene(), "the red square", "I cannot tell."
    _answering(predictor, monkeypatch, text)
    expected, _, _, _ = _lens_mask(predictor, image, query, text)
    result = predictor.predict(image, query)
    assert result.status == "no_box" and result.instances == []
    np.testing.assert_array_equal(result.mask, expected)
