"""The shared dataset behaviour: indexing per sentence or per ref, skipping broken targets, Sample checks."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest

from training.data.dataset import Decoded, Query, Target, TargetDataset
from training.data.sample import Sample
from training.data.skips import BrokenEntry, SkipCounter


class ToyDataset(TargetDataset[int]):
    """Annotation = mask value; a negative annotation is a broken target."""

    decodes = 0

    def decode(self, target: Target[int]) -> Decoded:
        self.decodes += 1
        if target.annotation < 0:
            raise BrokenEntry("toy failure", f"annotation {target.annotation}")
        mask = np.zeros((4, 5), bool)
        mask[: target.annotation + 1] = True
        return Decoded(image=np.zeros((4, 5, 3), np.uint8), mask=mask, box=(0.0, 0.0, 5.0, target.annotation + 1.0))


def _toy(per: str = "sentence", rng: random.Random | None = None) -> ToyDataset:
    def target(ref: str, annotation: int, texts: list[str]) -> Target[int]:
        queries = tuple(Query(text, f"{ref}:{k}", meta={"k": k}) for k, text in enumerate(texts))
        return Target(Path(f"{ref}.png"), f"img-{ref}", ref, queries, annotation, {"split": "val"})

    targets = [target("a", 0, ["a0", "a1"]), target("b", -1, ["b0", "b1", "b2"]), target("c", 2, ["c0"])]
    return ToyDataset(targets, source="toy", per=per, skips=SkipCounter("toy"), rng=rng)  # type: ignore[arg-type]


def test_one_sample_per_sentence_in_order() -> None:
    dataset = _toy()
    assert len(dataset) == 6
    sample = dataset[1]
    assert sample is not None
    assert (sample.text, sample.sample_id, sample.ref_id, sample.image_id, sample.source) == (
        "a1",
        "a:1",
        "a",
        "img-a",
        "toy",
    )
    assert sample.meta == {"split": "val", "k": 1}
    assert dataset[5] is not None and dataset[5].text == "c0"
    with pytest.raises(IndexError):
        dataset[6]


def test_broken_targets_give_none_and_are_counted_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    dataset = _toy()
    with caplog.at_level(logging.WARNING, logger="training.data"):
        texts = [sample.text for sample in dataset]
    assert texts == ["a0", "a1", "c0"]
    assert dataset[2] is None
    assert dataset.skips.counts == {"toy failure": 4}
    assert "skipped 3 entries (toy failure x3)" in caplog.text  # the summary after the full pass
    assert caplog.text.count("annotation -1") == 1  # the detail is logged once, later ones only counted


def test_consecutive_sentences_share_one_decode_but_not_arrays() -> None:
    dataset = _toy()
    first, second = dataset[0], dataset[1]
    assert dataset.decodes == 1
    assert first is not None and second is not None
    first.mask[:] = False
    assert second.mask.any()


def test_per_ref_draws_a_sentence_with_the_given_rng() -> None:
    dataset = _toy("ref", random.Random(3))
    assert len(dataset) == 3
    draws = [dataset[0].text for _ in range(40)]  # type: ignore[union-attr]
    assert set(draws) == {"a0", "a1"}
    again = _toy("ref", random.Random(3))
    assert [again[0].text for _ in range(40)] == draws  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        _toy("image")


def test_skip_counter_summary() -> None:
    counter = SkipCounter("demo")
    assert counter.summary() == "demo: no entries skipped"
    counter.skip("missing image", "a.jpg")
    counter.skip_error(BrokenEntry("empty mask"), "ref 3")
    counter.skip("missing image")
    assert counter.total == 3
    assert counter.summary() == "demo: skipped 3 entries (empty mask x1, missing image x2)"


def test_sample_validates_its_arrays() -> None:
    image = np.zeros((3, 4, 3), np.uint8)
    mask = np.zeros((3, 4), bool)
    sample = Sample(image, "t", mask, (0, 0, 1, 1), "i", "r", "s", "src")
    assert sample.box == (0.0, 0.0, 1.0, 1.0) and (sample.height, sample.width) == (3, 4)
    with pytest.raises(ValueError, match="mask"):
        Sample(image, "t", mask.astype(np.uint8), (0, 0, 1, 1), "i", "r", "s", "src")
    with pytest.raises(ValueError, match="ignore"):
        Sample(image, "t", mask, (0, 0, 1, 1), "i", "r", "s", "src", ignore=np.zeros((4, 3), bool))
    with pytest.raises(ValueError, match="image"):
        Sample(image.astype(np.float32), "t", mask, (0, 0, 1, 1), "i", "r", "s", "src")
