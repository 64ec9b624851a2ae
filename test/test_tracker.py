"""LensTracker: box prompts from the last good mask, lost detection, bad frames, the track's life cycle.

Most tests replace SAM 2's box decoding with a scripted one (``ScriptedSam``) that records the
prompts and returns chosen masks and scores, so every rule is checked exactly; the last ones run
the real models (tiny random, and lens-synth-demo on a moving shape).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lens_model import sam_head
from lens_model.errors import CheckpointFormatError, InputError
from lens_model.predictor import LensPredictor
from lens_model.instance_tracks import InstanceTracks
from lens_model.result import Instance, mask_to_box
from lens_model.tracker import LensTracker, TrackerConfig, TrackStep
from model_fixtures import tiny_model

SIDE = 64  # the tiny SAM 2's low-resolution mask side: a 64 x 64 frame maps logits 1:1 to pixels
SAM_SIZE = 256


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def frame(height: int = SIDE, width: int = SIDE) -> np.ndarray:
    return np.full((height, width, 3), 128, np.uint8)


def rect(y1: int, y2: int, x1: int, x2: int, side: int = SIDE) -> np.ndarray:
    mask = np.zeros((side, side), bool)
    mask[y1:y2, x1:x2] = True
    return mask


class ScriptedSam:
    """Stands in for ``sam_head.decode_box_masks``: records each prompt (in SAM 2's frame) and answers
    with the next scripted (low-resolution mask, predicted IoU)."""

    def __init__(self, monkeypatch, answers: list[tuple[np.ndarray, float]]) -> None:
        self.answers = list(answers)
        self.boxes: list[list[float]] = []
        monkeypatch.setattr(sam_head, "decode_box_masks", self)

    def __call__(self, sam, features, boxes):
        self.boxes.append(boxes[0].tolist())
        mask, iou = self.answers.pop(0)
        logits = torch.where(torch.from_numpy(mask), 10.0, -10.0)[None]
        return logits, torch.tensor([iou])


def sam_box(x1: float, y1: float, x2: float, y2: float, side: int = SIDE) -> list[float]:
    return [v * SAM_SIZE / side for v in (x1, y1, x2, y2)]


def test_the_box_prompt_is_the_seed_box_grown_by_the_margin_on_every_side(model, monkeypatch):
    sam = ScriptedSam(monkeypatch, [(rect(10, 30, 20, 40), 0.9)])
    tracker = LensTracker(model, TrackerConfig(box_margin=0.1))
    tracker.start(frame(), rect(10, 30, 20, 40))  # box (20, 10, 40, 30): 20 px wide and high
    step = tracker.step(frame())
    assert sam.boxes[0] == pytest.approx(sam_box(18, 8, 42, 32))
    assert step.box == (20.0, 10.0, 40.0, 30.0) and not step.lost and step.score == pytest.approx(0.9)
    assert step.mask.dtype == np.bool_ and step.mask.shape == (SIDE, SIDE) and step.mask.sum() == 400


def test_the_track_follows_the_largest_region_of_the_seed(model, monkeypatch):
    sam = ScriptedSam(monkeypatch, [(rect(10, 30, 20, 40), 0.9)])
    tracker = LensTracker(model, TrackerConfig(box_margin=0.0))
    tracker.start(frame(), rect(10, 30, 20, 40) | rect(50, 54, 50, 54))  # a stray blob of the query's mask
    assert not tracker.step(frame()).lost  # the area is compared with the region's, not with the blobs'
    assert sam.boxes[0] == pytest.approx(sam_box(20, 10, 40, 30))


def test_the_prompt_follows_the_targets_motion_and_stays_inside_the_frame(model, monkeypatch):
    moved = rect(10, 30, 28, 48)  # 8 px to the right
    sam = ScriptedSam(monkeypatch, [(moved, 0.9), (rect(10, 30, 44, 64), 0.9)])
    tracker = LensTracker(model, TrackerConfig(box_margin=0.0))
    tracker.start(frame(), rect(10, 30, 20, 40))
    tracker.step(frame())
    tracker.step(frame())
    # velocity: half of the last shift (the smoothing starts from rest), so the box is expected 4 px on
    assert sam.boxes[1] == pytest.approx(sam_box(32, 10, 52, 30))
    sam.answers.append((rect(10, 30, 44, 64), 0.9))
    tracker.step(frame())  # velocity (4 + 16) / 2 = 10 px: 54..74 is clipped at the frame's edge
    assert sam.boxes[2] == pytest.approx(sam_box(54, 10, 64, 30))


@pytest.mark.parametrize("answer, reason", [
    (np.zeros((SIDE, SIDE), bool), "empty mask"),
    (rect(10, 30, 20, 40), "score 0.10 < 0.30"),
    (rect(10, 14, 20, 40), "area ratio 0.20 < 0.25"),
    (rect(0, 64, 0, 30), "area ratio 4.80 > 1.50"),
    (rect(10, 30, 20, 52), "area ratio 1.60 > 1.50"),  # a sudden spread onto a neighbour
])
def test_lost_steps_and_why(model, monkeypatch, answer, reason):
    score = 0.1 if reason.startswith("score") else 0.9
    ScriptedSam(monkeypatch, [(answer, score)])
    tracker = LensTracker(model, TrackerConfig())
    tracker.start(frame(), rect(10, 30, 20, 40))
    step = tracker.step(frame())
    assert step.lost and step.reason == reason
    assert tracker.active  # re-acquiring is the caller's decision
    assert np.array_equal(step.mask, answer)  # the mask SAM 2 gave, for the caller to show or drop
    assert step.box is None if not answer.any() else step.box is not None


def test_a_lost_step_keeps_the_last_good_mask_as_the_reference(model, monkeypatch):
    sam = ScriptedSam(monkeypatch, [(rect(0, 64, 0, 64), 0.9), (rect(10, 30, 22, 42), 0.9), (rect(10, 30, 22, 42), 0.9)])
    tracker = LensTracker(model, TrackerConfig(box_margin=0.0))
    tracker.start(frame(), rect(10, 30, 20, 40))
    assert tracker.step(frame()).lost  # the whole frame: an explosion
    assert not tracker.step(frame()).lost
    assert sam.boxes[1] == pytest.approx(sam_box(20, 10, 40, 30))  # the seed's box, not the lost mask's
    tracker.step(frame())  # the good step is the reference: 2 px over two steps, smoothed to 0.5 px a step
    assert sam.boxes[2] == pytest.approx(sam_box(22.5, 10, 42.5, 30))


def test_a_blob_outside_the_prompt_box_is_dropped(model, monkeypatch):
    leak = rect(10, 30, 20, 40) | rect(50, 60, 50, 60)
    ScriptedSam(monkeypatch, [(leak, 0.9)])
    tracker = LensTracker(model)
    tracker.start(frame(), rect(10, 30, 20, 40))
    step = tracker.step(frame())
    assert np.array_equal(step.mask, rect(10, 30, 20, 40)) and step.box == (20.0, 10.0, 40.0, 30.0)


def test_frames_of_another_size_get_masks_of_their_own_size(model, monkeypatch):
    sam = ScriptedSam(monkeypatch, [(rect(16, 48, 16, 48), 0.9)])
    tracker = LensTracker(model, TrackerConfig(box_margin=0.0))
    tracker.start(frame(), rect(16, 48, 16, 48))
    step = tracker.step(frame(96, 128))
    assert step.mask.shape == (96, 128)
    assert sam.boxes[0] == pytest.approx(sam_box(16, 16, 48, 48))  # the same place, relative to the frame
    assert step.box == (32.0, 24.0, 96.0, 72.0)


@pytest.mark.parametrize("bad", [
    np.zeros((SIDE, SIDE, 3), np.float32), np.zeros((SIDE, SIDE), np.uint8), np.zeros((SIDE, SIDE, 4), np.uint8),
    np.zeros((1, SIDE, 3), np.uint8), "frame.png", None,
])
def test_a_bad_frame_raises_input_error_and_changes_nothing(model, monkeypatch, bad):
    sam = ScriptedSam(monkeypatch, [(rect(10, 30, 28, 48), 0.9), (rect(10, 30, 36, 56), 0.9)])
    tracker = LensTracker(model, TrackerConfig(box_margin=0.0))
    tracker.start(frame(), rect(10, 30, 20, 40))
    tracker.step(frame())
    reference = tracker._reference
    with pytest.raises(InputError):
        tracker.step(bad)
    assert tracker._reference == reference and tracker.active
    tracker.step(frame())
    assert sam.boxes[1] == pytest.approx(sam_box(32, 10, 52, 30))  # as if the bad frame never came


@pytest.mark.parametrize("mask, message", [
    (np.zeros((SIDE, SIDE), bool), "empty"),
    (np.ones((SIDE, SIDE + 1), bool), "shape"),
    (np.ones((SIDE, SIDE), np.float32), "bool or integer"),
    ([[1]], "numpy array"),
])
def test_start_refuses_a_mask_it_cannot_track(model, mask, message):
    tracker = LensTracker(model)
    with pytest.raises(InputError, match=message):
        tracker.start(frame(), mask)
    assert not tracker.active


def test_life_cycle(model, monkeypatch):
    ScriptedSam(monkeypatch, [(rect(10, 30, 20, 40), 0.9)])
    tracker = LensTracker(model)
    assert not tracker.active
    with pytest.raises(RuntimeError, match="not started"):
        tracker.step(frame())
    tracker.start(frame(), rect(10, 30, 20, 40).astype(np.uint8))  # an integer mask counts its nonzero pixels
    assert tracker.active
    tracker.step(frame())
    tracker.stop()
    assert not tracker.active
    with pytest.raises(RuntimeError, match="not started"):
        tracker.step(frame())


@pytest.mark.parametrize("field, value", [("box_margin", 1.5), ("min_score", -0.1), ("min_area_ratio", 2.0),
                                          ("max_area_ratio", 0.5), ("mode", "flow"), ("box_margin", "0.1")])
def test_config_fields_are_checked(field, value):
    with pytest.raises(CheckpointFormatError, match=field):
        TrackerConfig(**{field: value})


def test_memory_mode_without_memory_weights_is_an_error(model):
    with pytest.raises(InputError, match="memory_weights"):
        LensTracker(model, TrackerConfig(mode="memory"))


def test_the_real_tiny_model_gives_a_step_with_timings(model):
    tracker = LensPredictor(model).tracker()
    assert isinstance(tracker, LensTracker) and tracker.model is model
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    tracker.start(image, np.pad(np.ones((20, 20), bool), ((10, 18), (30, 30))))
    step = tracker.step(image)
    assert isinstance(step, TrackStep) and step.mask.shape == (48, 80) and step.mask.dtype == np.bool_
    assert 0.0 <= step.score <= 1.0
    assert set(step.timings_ms) == {"preprocess", "sam_image_encoder", "mask_decoder", "postprocess", "total"}
    assert step.timings_ms["total"] == pytest.approx(sum(v for k, v in step.timings_ms.items() if k != "total"))


def test_the_trackers_of_several_instances_share_one_encoding_per_frame(model, monkeypatch):
    predictor = LensPredictor(model)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (48, 80, 3), dtype=np.uint8) for _ in range(3)]
    seeds = [np.pad(np.ones((12, 12), bool), ((4, 32), (4, 64))), np.pad(np.ones((16, 20), bool), ((24, 8), (50, 10)))]
    alone = []  # each instance's own tracker, encoding every frame itself
    for seed in seeds:
        tracker = predictor.tracker()
        tracker.start(frames[0], seed)
        alone.append([tracker.step(image) for image in frames[1:]])
    encodes = []
    encode_images = sam_head.encode_images
    monkeypatch.setattr(sam_head, "encode_images", lambda sam, pixels: encodes.append(1) or encode_images(sam, pixels))
    instances = [Instance(mask_to_box(seed), seed, 1.0, None) for seed in seeds]
    tracks = InstanceTracks(predictor.tracker, frames[0], instances)
    for t, image in enumerate(frames[1:]):
        before = len(encodes)
        first, second = tracks.step(image)
        assert len(encodes) == before + 1  # one image encoding for both instances
        for shared, own in ((first, alone[0][t]), (second, alone[1][t])):
            assert (shared.score, shared.box, shared.status == "lost") == (own.score, own.box, own.lost)
            assert own.lost or np.array_equal(shared.mask, own.mask)
        assert "sam_image_encoder" in first.timings_ms and "sam_image_encoder" not in second.timings_ms
        assert first.timings_ms["total"] == pytest.approx(sum(v for k, v in first.timings_ms.items() if k != "total"))


def test_an_encoding_is_only_for_trackers_of_its_model_and_mode(model):
    image = frame()
    tracker, other = LensTracker(model), LensTracker(tiny_model())
    for each in (tracker, other):
        each.start(image, rect(10, 30, 10, 30))
    with pytest.raises(ValueError, match="another model"):
        other.step(tracker.encode(image))
    with pytest.raises(InputError):
        tracker.encode(np.zeros((4, 4), np.uint8))


def test_the_demo_model_follows_a_moving_shape():
    from training.data.synthetic_scenes import background, make_object

    size, rng = 112, np.random.default_rng(0)
    base = background(rng, size)
    tracker = LensPredictor.from_pretrained("lens-synth-demo").tracker()
    ious = []
    for t in range(12):
        shape = make_object("square", "blue", "large", (30.0 + 4 * t, 40.0 + 2 * t), 12.0, size)
        image = base.copy()
        image[shape.mask] = (40, 90, 220)
        if t == 0:
            tracker.start(image, shape.mask)
            continue
        step = tracker.step(image)
        ious.append((step.mask & shape.mask).sum() / (step.mask | shape.mask).sum())
    assert min(ious) > 0.8, ious
