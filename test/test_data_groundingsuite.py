"""GroundingSuite-Eval loader: RLE masks, verbatim captions, image paths, broken lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import load_dataset
from training.data.masks import mask_to_rle

HEIGHT, WIDTH = 40, 50


def _mask(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[rows, cols] = True
    return mask


@pytest.fixture
def gs_root(tmp_path: Path) -> Path:
    images = tmp_path / "coco" / "unlabeled2017"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(images / "000000000001.jpg")
    (images / "000000000002.jpg").write_bytes(b"corrupt")
    Image.fromarray(np.zeros((HEIGHT + 1, WIDTH, 3), np.uint8)).save(images / "000000000003.jpg")
    good = mask_to_rle(_mask(slice(2, 6), slice(3, 9)))
    lines = [
        {
            "idx": 0,
            "image_path": "unlabeled2017/000000000001.jpg",
            "box": [3, 2, 9, 6],
            "segmentation": good,
            "caption": "  This is a care package that is on the table. ",
            "label": "package",
        },
        {
            "idx": 1,
            "image_path": "000000000001.jpg",
            "box": [0, 0, 60, 20],
            "caption": "two parts",
            "segmentation": [
                mask_to_rle(_mask(slice(0, 2), slice(0, 2))),
                mask_to_rle(_mask(slice(10, 12), slice(10, 12))),
            ],
        },
        "{ this line is not json",
        {"idx": 3, "image_path": "unlabeled2017/absent.jpg", "box": [1, 1, 2, 2], "segmentation": good, "caption": "x"},
        {"idx": 4, "image_path": "000000000002.jpg", "box": [1, 1, 2, 2], "segmentation": good, "caption": "x"},
        {"idx": 5, "image_path": "000000000003.jpg", "box": [1, 1, 2, 2], "segmentation": good, "caption": "x"},
        {
            "idx": 6,
            "image_path": "000000000001.jpg",
            "box": [1, 1, 2, 2],
            "caption": "x",
            "segmentation": mask_to_rle(np.zeros((HEIGHT, WIDTH), bool)),
        },
        {
            "idx": 7,
            "image_path": "000000000001.jpg",
            "box": [1, 1, 2, 2],
            "caption": "x",
            "segmentation": {"size": [HEIGHT, WIDTH], "counts": "0000"},
        },
        {"idx": 8, "image_path": "000000000001.jpg", "box": [5, 5, 1, 1], "segmentation": good, "caption": "x"},
        {"idx": 9, "image_path": "000000000001.jpg", "box": [1, 1, 2, 2], "segmentation": good, "caption": ""},
    ]
    jsonl = tmp_path / "groundingsuite" / "GroundingSuite-Eval.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n\n")
    return tmp_path


def test_captions_are_verbatim_and_masks_decoded(gs_root: Path) -> None:
    first, second = list(load_dataset("groundingsuite", gs_root))
    assert first.text == "This is a care package that is on the table."  # no "is"/"are" mangling
    np.testing.assert_array_equal(first.mask, _mask(slice(2, 6), slice(3, 9)))
    assert first.box == (3.0, 2.0, 9.0, 6.0)
    assert (first.sample_id, first.image_id, first.source) == ("0", "000000000001", "groundingsuite")
    assert second.mask.sum() == 8  # union of the two RLEs
    assert second.box == (0.0, 0.0, 50.0, 20.0)  # clipped to the image


def test_broken_lines_are_skipped_and_counted(gs_root: Path) -> None:
    dataset = load_dataset("groundingsuite", gs_root, "eval")
    assert len(dataset) == 5 and len(list(dataset)) == 2
    assert dataset.skips.counts == {
        "malformed json line": 1,
        "missing image": 1,
        "bad rle": 1,
        "bad box": 1,
        "missing field": 1,
        "undecodable image": 1,
        "mask size mismatch": 1,
        "empty mask": 1,
    }


def test_paths_can_be_overridden_and_split_is_checked(gs_root: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_text((gs_root / "groundingsuite" / "GroundingSuite-Eval.jsonl").read_text())
    dataset = load_dataset(
        "groundingsuite", tmp_path / "nothing", jsonl_path=moved, image_root=gs_root / "coco" / "unlabeled2017"
    )
    assert len(list(dataset)) == 2
    with pytest.raises(ValueError, match="single split"):
        load_dataset("groundingsuite", gs_root, "train")


def test_image_paths_stay_inside_the_image_root(gs_root: Path) -> None:
    good = {"idx": 0, "box": [3, 2, 9, 6], "segmentation": mask_to_rle(_mask(slice(2, 6), slice(3, 9))), "caption": "x"}
    (gs_root / "secret.jpg").write_bytes((gs_root / "coco" / "unlabeled2017" / "000000000001.jpg").read_bytes())
    lines = [
        {**good, "image_path": "../../secret.jpg"},  # not retried as "secret.jpg" in the root
        {**good, "image_path": str(gs_root / "coco" / "unlabeled2017" / "000000000001.jpg")},
        {**good, "image_path": "unlabeled2017/000000000001.jpg", "idx": {"a": 1}},
        {**good, "image_path": "unlabeled2017/000000000001.jpg", "box": [0, 0, 10**400, 5]},
        {**good, "image_path": "unlabeled2017/000000000001.jpg"},
    ]
    jsonl = gs_root / "groundingsuite" / "GroundingSuite-Eval.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines))
    dataset = load_dataset("groundingsuite", gs_root)
    assert len(list(dataset)) == 1
    assert dataset.skips.counts == {"path outside the dataset": 2, "bad id": 1, "bad box": 1}
