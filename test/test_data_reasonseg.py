"""ReasonSeg loader: LISA-style painting order, ignore regions kept apart, every sentence, broken files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from training.data import load_dataset
from training.data.reasonseg import ReasonSegDataset, painted_area

HEIGHT, WIDTH = 60, 80


def _write(folder: Path, stem: str, record: object, image: bool | bytes = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(record if isinstance(record, str) else json.dumps(record))
    if image is True:
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), 128, np.uint8)).save(folder / f"{stem}.jpg")
    elif image:
        (folder / f"{stem}.jpg").write_bytes(image)


def _shape(label: str, x1: int, y1: int, x2: int, y2: int) -> dict:
    return {"label": label, "points": [[x1, y1], [x2, y1], [x2, y2], [x1, y2]], "shape_type": "polygon"}


@pytest.fixture
def reasonseg_root(tmp_path: Path) -> Path:
    val = tmp_path / "reason_seg" / "ReasonSeg" / "val"
    _write(
        val,
        "a_target_with_ignore",
        {
            "text": ["what keeps the food cold?", "the appliance for storing milk", " "],
            "is_sentence": True,
            "shapes": [
                _shape("flag", 0, 0, 79, 59),
                _shape("target", 10, 10, 40, 30),
                _shape("ignore", 20, 15, 25, 20),
            ],
        },
    )
    _write(
        val,
        "b_target_inside_ignore",
        {
            "text": "the small thing",
            "is_sentence": False,
            "shapes": [_shape("ignore_region", 0, 0, 50, 50), _shape("target", 5, 5, 9.7, 9.2)],
        },
    )
    _write(val, "c_missing_image", {"text": ["x"], "shapes": [_shape("target", 1, 1, 5, 5)]}, image=False)
    _write(val, "d_corrupt_image", {"text": ["x"], "shapes": [_shape("target", 1, 1, 5, 5)]}, image=b"\xff\xd8garbage")
    _write(val, "e_no_text", {"text": [], "shapes": [_shape("target", 1, 1, 5, 5)]})
    _write(val, "f_malformed", "{ not json")
    _write(val, "g_two_points", {"text": ["x"], "shapes": [{"label": "target", "points": [[1, 1], [5, 5]]}]})
    _write(val, "h_out_of_bounds", {"text": ["x"], "shapes": [_shape("target", 10, 10, 500, 40)]})
    _write(val, "i_only_ignore", {"text": ["x"], "shapes": [_shape("ignore", 1, 1, 5, 5)]})
    return tmp_path


def test_every_sentence_is_a_sample_and_ignore_regions_stay_apart(reasonseg_root: Path) -> None:
    dataset = load_dataset("reasonseg", reasonseg_root, "val")
    samples = list(dataset)
    assert [s.text for s in samples] == [
        "what keeps the food cold?",
        "the appliance for storing milk",
        "the small thing",
    ]
    first = samples[0]
    ignore = np.zeros((HEIGHT, WIDTH), bool)
    ignore[15:21, 20:26] = True  # the smaller ignore square is painted over the target (outline included)
    target = np.zeros((HEIGHT, WIDTH), bool)
    target[10:31, 10:41] = True
    np.testing.assert_array_equal(first.ignore, ignore)
    np.testing.assert_array_equal(first.mask, target & ~ignore)
    assert first.box == (10.0, 10.0, 41.0, 31.0)
    assert first.meta == {"is_sentence": True, "split": "val"}
    assert (first.sample_id, first.ref_id, samples[1].sample_id) == (
        "a_target_with_ignore:0",
        "a_target_with_ignore",
        "a_target_with_ignore:1",
    )


def test_smaller_target_is_painted_over_a_larger_ignore_region(reasonseg_root: Path) -> None:
    sample = next(s for s in load_dataset("reasonseg", reasonseg_root, "val") if s.ref_id == "b_target_inside_ignore")
    target = np.zeros((HEIGHT, WIDTH), bool)
    target[5:10, 5:10] = True  # vertices truncated to int, as LISA does
    np.testing.assert_array_equal(sample.mask, target)
    assert sample.ignore is not None and sample.ignore.sum() == 51 * 51 - 25
    assert sample.meta["is_sentence"] is False


def test_broken_files_are_skipped_and_counted(reasonseg_root: Path) -> None:
    dataset = ReasonSegDataset(reasonseg_root / "reason_seg" / "ReasonSeg" / "val")
    assert len(dataset) == 5  # 2 + 1 good sentences, plus the two that only fail when decoded
    assert len(list(dataset)) == 3
    assert dataset.skips.counts == {
        "missing image": 1,
        "no query": 1,
        "malformed json": 1,
        "bad polygon": 1,
        "empty mask": 1,
        "undecodable image": 1,
        "polygon out of bounds": 1,
    }


def test_missing_split_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ReasonSeg"):
        load_dataset("reasonseg", tmp_path, "test")


def test_hostile_files_are_skipped_and_counted(tmp_path: Path) -> None:
    val = tmp_path / "val"
    good = {"text": ["x"], "shapes": [_shape("target", 1, 1, 5, 5)]}
    _write(val, "a_good", good)
    _write(val, "b_deep", "[" * 100_000 + "]" * 100_000)  # RecursionError in json
    _write(val, "c_huge_coordinate", '{"text": ["x"], "shapes": [{"label": "t", "points": [[1, 1], [5, 1], [5, 1'
           + "0" * 400 + "]]}]}")  # a 401-digit JSON integer: OverflowError in float()
    _write(val, "d_deep_label", {**good, "shapes": [{**_shape("target", 1, 1, 5, 5), "label": [[["target"]]]}]})
    (tmp_path / "outside.json").write_text(json.dumps(good))
    (val / "e_escaping.json").symlink_to(tmp_path / "outside.json")
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(val / "e_escaping.jpg")
    _write(val, "f_image_escapes", good, image=False)
    (val / "f_image_escapes.jpg").symlink_to(val / "a_good.jpg")  # inside: fine
    _write(val, "g_image_escapes", good, image=False)
    (val / "g_image_escapes.png").symlink_to("/proc/self/mem")
    dataset = ReasonSegDataset(val)
    assert sorted(t.ref_id for t in dataset.targets) == ["a_good", "d_deep_label", "f_image_escapes"]
    assert dataset.skips.counts == {"malformed json": 1, "bad polygon": 1, "path outside the dataset": 2}


def _full_canvas_area(points: np.ndarray, height: int, width: int) -> int:
    canvas = np.zeros((height, width), np.uint8)
    cv2.polylines(canvas, [points], True, 1, 1)
    cv2.fillPoly(canvas, [points], 1)
    return int(canvas.sum())


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(-6, WIDTH + 6), st.integers(-6, HEIGHT + 6)), min_size=3, max_size=9))
def test_painted_area_on_the_bounding_box_equals_the_full_canvas(vertices: list[tuple[int, int]]) -> None:
    points = np.asarray(vertices, dtype=np.int32)
    assert painted_area(points, HEIGHT, WIDTH) == _full_canvas_area(points, HEIGHT, WIDTH)
