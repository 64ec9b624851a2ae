"""Dataset names map to the right loader, folder and options."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import DATASET_NAMES, SkipCounter, load_dataset
from training.data.refer import ReferDataset
from training.synthetic import generate_dataset


def test_synthetic_loads_with_shared_options(tmp_path: Path) -> None:
    generate_dataset(tmp_path, num_images=4, seed=0, size=64)
    skips = SkipCounter("shared")
    dataset = load_dataset("synthetic", tmp_path, "train", per="ref", skips=skips)
    assert isinstance(dataset, ReferDataset) and dataset.per == "ref" and dataset.skips is skips
    assert dataset.source == "synthetic"


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("refcoco", "refcoco/refs(unc).p"),
        ("refcoco+", "refcoco+/refs(unc).p"),
        ("refcocog", "refcocog/refs(umd).p"),
        ("synthetic", "synthetic/refs(unc).p"),
        ("grefcoco", "grefcoco/grefs(unc).json"),
        ("groundingsuite", "groundingsuite/GroundingSuite-Eval.jsonl"),
        ("jsonl", "val.jsonl"),
    ],
)
def test_each_name_reads_its_documented_path(tmp_path: Path, name: str, missing: str) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_dataset(name, tmp_path, None if name == "groundingsuite" else "val")
    assert missing in str(error.value)


def test_unknown_names_and_missing_splits_are_clear_errors(tmp_path: Path) -> None:
    assert set(DATASET_NAMES) == {
        "refcoco",
        "refcoco+",
        "refcocog",
        "grefcoco",
        "reasonseg",
        "groundingsuite",
        "jsonl",
        "synthetic",
    }
    with pytest.raises(ValueError, match="unknown dataset 'coco'"):
        load_dataset("coco", tmp_path, "val")
    with pytest.raises(ValueError, match="needs a split"):
        load_dataset("refcoco", tmp_path)
