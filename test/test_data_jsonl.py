"""The plain JSONL format for users' own data, and the writers that export samples to each format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import Sample, load_dataset
from training.data.export import write_groundingsuite, write_jsonl, write_reasonseg
from training.data.jsonl import JsonlDataset
from training.data.masks import mask_to_rle
from training.iou import mask_intersection_union
from training.synthetic import generate_dataset

HEIGHT, WIDTH = 30, 40


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def robot_data(tmp_path: Path) -> Path:
    target = np.zeros((HEIGHT, WIDTH), bool)
    target[5:15, 10:20] = True
    ignore = np.zeros((HEIGHT, WIDTH), np.uint8)
    ignore[0:2, :] = 255
    _png(tmp_path / "frames" / "0001.png", np.full((HEIGHT, WIDTH, 3), 50, np.uint8))
    _png(tmp_path / "masks" / "0001_cup.png", target.astype(np.uint8) * 255)
    _png(tmp_path / "masks" / "0001_ignore.png", ignore)
    _png(tmp_path / "masks" / "empty.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    _png(tmp_path / "masks" / "small.png", np.ones((HEIGHT - 1, WIDTH), np.uint8))
    (tmp_path / "frames" / "corrupt.png").write_bytes(b"\x89PNG broken")
    _png(tmp_path / "elsewhere" / "0002.png", np.full((HEIGHT, WIDTH, 3), 200, np.uint8))
    lines = [
        {
            "id": "cup",
            "image": "frames/0001.png",
            "text": ["the red cup", "the cup on the left"],
            "mask": "masks/0001_cup.png",
            "ignore": "masks/0001_ignore.png",
            "reasoning": ["cups are red", "it is left"],
            "meta": {"scene": "kitchen", "dark": False},
        },
        {
            "image": "elsewhere/0002.png",
            "text": "the gripper",
            "mask": mask_to_rle(target),
            "box": [9, 4, 21, 16],
            "reasoning": "only one",
        },
        "not json at all",
        {"image": "frames/absent.png", "text": "x", "mask": "masks/0001_cup.png"},
        {"image": "frames/corrupt.png", "text": "x", "mask": "masks/0001_cup.png"},
        {"image": "frames/0001.png", "text": "x", "mask": "masks/empty.png"},
        {"image": "frames/0001.png", "text": "x", "mask": "masks/small.png"},
        {"image": "frames/0001.png", "text": "x", "mask": "masks/absent.png"},
        {"image": "frames/0001.png", "text": ["x", "y"], "mask": "masks/0001_cup.png", "reasoning": ["one"]},
        {"image": "frames/0001.png", "text": [""], "mask": "masks/0001_cup.png"},
        {"image": "frames/0001.png", "text": "x", "mask": 42},
        {"image": "frames/0001.png", "text": "x", "mask": "masks/0001_cup.png", "meta": {"tags": ["a"]}},
    ]
    (tmp_path / "train.jsonl").write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    )
    return tmp_path


def test_png_and_rle_masks_texts_reasoning_and_ignore(robot_data: Path) -> None:
    first, second, third = list(load_dataset("jsonl", robot_data, "train"))
    assert (first.text, first.reasoning, first.sample_id, first.ref_id) == (
        "the red cup",
        "cups are red",
        "cup:0",
        "cup",
    )
    assert (second.text, second.reasoning, second.sample_id) == ("the cup on the left", "it is left", "cup:1")
    assert first.meta == second.meta == {"scene": "kitchen", "dark": False} and third.meta == {}
    assert first.mask.sum() == 100 and first.box == (10.0, 5.0, 20.0, 15.0)  # box from the mask
    assert first.ignore is not None and first.ignore.sum() == 2 * WIDTH
    np.testing.assert_array_equal(third.mask, first.mask)
    assert (third.text, third.reasoning, third.box, third.ignore) == (
        "the gripper",
        "only one",
        (9.0, 4.0, 21.0, 16.0),
        None,
    )
    assert third.image[0, 0, 0] == 200 and third.sample_id == "2:0"  # line number as id


def test_broken_lines_are_skipped_and_counted(robot_data: Path) -> None:
    dataset = JsonlDataset(robot_data / "train.jsonl")
    assert len(dataset) == 6 and len(list(dataset)) == 3
    assert dataset.skips.counts == {
        "malformed json line": 1,
        "missing image": 1,
        "missing mask": 1,
        "bad reasoning": 1,
        "no query": 1,
        "missing field": 1,
        "undecodable image": 1,
        "empty mask": 1,
        "mask size mismatch": 1,
        "bad meta": 1,
    }


def test_root_may_be_the_jsonl_file_itself(robot_data: Path) -> None:
    assert len(load_dataset("jsonl", robot_data / "train.jsonl")) == 6
    with pytest.raises(ValueError, match="needs a split"):
        load_dataset("jsonl", robot_data)


@pytest.fixture(scope="module")
def synthetic_samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = tmp_path_factory.mktemp("export")
    generate_dataset(root, num_images=6, seed=4, size=96)
    return list(load_dataset("synthetic", root, "train"))


def test_samples_of_several_objects_or_none_are_not_exported(synthetic_samples: list[Sample], tmp_path: Path) -> None:
    single = [s for s in synthetic_samples if len(s.instances) == 1]
    assert 0 < len(single) < len(synthetic_samples)
    assert write_jsonl(synthetic_samples, tmp_path / "all.jsonl") == len(single)
    assert [s.text for s in load_dataset("jsonl", tmp_path / "all.jsonl")] == [s.text for s in single]


@pytest.mark.parametrize("mask_format", ["rle", "png"])
def test_write_jsonl_round_trips_exactly(synthetic_samples: list[Sample], tmp_path: Path, mask_format: str) -> None:
    single = [s for s in synthetic_samples if len(s.instances) == 1]
    assert write_jsonl(single, tmp_path / "all.jsonl", mask_format=mask_format) == len(single)
    loaded = list(load_dataset("jsonl", tmp_path / "all.jsonl"))
    for original, copy in zip(single, loaded, strict=True):
        np.testing.assert_array_equal(copy.image, original.image)
        np.testing.assert_array_equal(copy.mask, original.mask)
        assert (copy.text, copy.box, copy.reasoning) == (original.text, original.box, original.reasoning)
        assert copy.meta == original.meta and "expression_type" in copy.meta


def test_groundingsuite_and_reasonseg_exports_load_back(synthetic_samples: list[Sample], tmp_path: Path) -> None:
    synthetic_samples = [s for s in synthetic_samples if len(s.instances) == 1]
    write_groundingsuite(
        synthetic_samples,
        tmp_path / "groundingsuite" / "GroundingSuite-Eval.jsonl",
        tmp_path / "coco" / "unlabeled2017",
    )
    for original, copy in zip(synthetic_samples, load_dataset("groundingsuite", tmp_path), strict=True):
        np.testing.assert_array_equal(copy.mask, original.mask)
        assert copy.text == original.text
    refs = {s.ref_id for s in synthetic_samples}
    assert write_reasonseg(synthetic_samples, tmp_path / "reason_seg" / "ReasonSeg" / "train") == len(refs)
    loaded = list(load_dataset("reasonseg", tmp_path, "train"))
    assert sorted(s.text for s in loaded) == sorted(s.text for s in synthetic_samples)
    by_text = {s.text + s.ref_id: s for s in synthetic_samples}
    for copy in loaded:
        intersection, union = mask_intersection_union(copy.mask, by_text[copy.text + copy.ref_id].mask)
        assert intersection / union > 0.99  # outer contours re-filled by the LISA rasteriser


def test_paths_must_name_regular_files_inside_the_dataset(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _png(root / "frames" / "0001.png", np.full((HEIGHT, WIDTH, 3), 50, np.uint8))
    _png(tmp_path / "outside.png", np.full((HEIGHT, WIDTH, 3), 50, np.uint8))
    (root / "inside_link.png").symlink_to(root / "frames" / "0001.png")
    (root / "escaping_link.png").symlink_to(tmp_path / "outside.png")
    (root / "proc_link.png").symlink_to("/proc/self/mem")
    os.mkfifo(root / "fifo.png")
    rle = mask_to_rle(np.ones((HEIGHT, WIDTH), bool))
    images = {
        "inside_link.png": None,  # a symlink that stays inside is fine
        str(root / "frames" / "0001.png"): "path outside the dataset",  # absolute, even if inside
        "../outside.png": "path outside the dataset",
        "frames/../../outside.png": "path outside the dataset",
        "escaping_link.png": "path outside the dataset",
        "proc_link.png": "path outside the dataset",
        "fifo.png": "not a regular file",  # would block a reader forever
        "frames": "not a regular file",
    }
    lines = [{"image": image, "text": "x", "mask": rle} for image in images]
    lines += [
        {"image": "frames/0001.png", "text": "x", "mask": "../outside.png"},
        {"image": "frames/0001.png", "text": "x", "mask": rle, "ignore": "/proc/self/mem"},
    ]
    (root / "train.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    dataset = JsonlDataset(root / "train.jsonl")
    assert [target.image_id for target in dataset.targets] == ["inside_link.png"]
    assert dataset.skips.counts == {"path outside the dataset": 7, "not a regular file": 2}
    assert next(iter(dataset)).image[0, 0, 0] == 50


def test_hostile_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    _png(tmp_path / "frame.png", np.full((HEIGHT, WIDTH, 3), 50, np.uint8))
    good = {"image": "frame.png", "text": "x", "mask": mask_to_rle(np.ones((HEIGHT, WIDTH), bool))}
    lines = [
        "[" * 100_000,  # RecursionError in json
        '{"id": ' + "7" * 5000 + "}",  # past Python's integer digit limit
        json.dumps({**good, "mask": {"size": [HEIGHT, WIDTH], "counts": [2**70]}}),
        json.dumps({**good, "mask": {"size": [float("inf"), WIDTH], "counts": "0"}}),  # Infinity
        json.dumps({**good, "box": [0, 0, 10**400, 5]}),  # OverflowError in float()
        json.dumps({**good, "box": [0, 0, 1e400, 5]}),  # Infinity
        json.dumps({**good, "mask": {"size": [10**5, 10**5], "counts": [10**10]}}),
        json.dumps({**good, "id": [[[1]]]}),
        json.dumps(good),
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines))
    dataset = JsonlDataset(tmp_path / "train.jsonl")
    assert len(list(dataset)) == 1
    assert dataset.skips.counts == {"malformed json line": 2, "bad rle": 2, "bad box": 2, "mask too large": 1, "bad id": 1}
