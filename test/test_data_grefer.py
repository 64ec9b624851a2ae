"""gRefCOCO loader: expressions naming several objects or none, in the refer layout; broken refs skipped and
counted, the pickled form read without running code."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import load_dataset
from training.data.grefer import MAX_TARGETS, GReferDataset

HEIGHT, WIDTH = 20, 30
SQUARE_A = [[2, 2, 8, 2, 8, 8, 2, 8]]  # rows and columns 2..7
SQUARE_B = [[12, 10, 18, 10, 18, 16, 12, 16]]  # rows 10..15, columns 12..17


def _ann(ann_id: int, segmentation: object, bbox: list[float], iscrowd: int = 0, image_id: int = 42) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": segmentation, "bbox": bbox,
            "iscrowd": iscrowd}


def _ref(ref_id: int, ann_id: object, split: str = "val", texts: tuple[str, ...] = ("the things",),
         image_id: int = 42, **extra: object) -> dict:
    sentences = [{"tokens": t.split(), "raw": t, "sent": t, "sent_id": 100 * ref_id + k} for k, t in enumerate(texts)]
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": [1], "split": split,
            "sentences": sentences, **extra}


def _write(root: Path, refs: list[dict], *, as_pickle: bool = False) -> None:
    images_dir = root / "images" / "mscoco" / "images" / "train2014"
    images_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images_dir / "COCO_train2014_000000000042.jpg", format="PNG")
    annotations = [
        _ann(1, SQUARE_A, [2, 2, 6, 6]),
        _ann(2, SQUARE_B, [12, 10, 6, 6]),
        _ann(3, {"size": [HEIGHT, WIDTH], "counts": [HEIGHT * WIDTH]}, [0, 0, 1, 1], iscrowd=1),
        _ann(4, {"size": [HEIGHT, WIDTH], "counts": [HEIGHT * WIDTH]}, [0, 0, 1, 1]),  # an empty mask
        *[_ann(100 + k, SQUARE_A, [2, 2, 6, 6]) for k in range(MAX_TARGETS + 1)],
    ]
    images = [{"id": 42, "height": HEIGHT, "width": WIDTH}, {"id": 43, "file_name": "../../../../grefcoco/x.json"}]
    folder = root / "grefcoco"
    folder.mkdir(exist_ok=True)
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    if as_pickle:
        (folder / "grefs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    else:
        (folder / "grefs(unc).json").write_text(json.dumps(refs))


def square(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[rows, cols] = True
    return mask


A, B = square(slice(2, 8), slice(2, 8)), square(slice(10, 16), slice(12, 18))


def test_several_targets_one_target_and_none(tmp_path: Path) -> None:
    _write(tmp_path, [
        _ref(0, [1, 2, 1], texts=("all the squares", "both squares")),  # a repeated id counts once
        _ref(1, 2, texts=("the right square",)),  # a bare id: one target
        _ref(2, [-1], texts=("the circle",), no_target=True),
        _ref(3, [], texts=("the triangle",)),
        _ref(4, [1, 3], texts=("the square and the crowd",)),  # the crowd annotation is left out
        _ref(5, [1], split="train"),
    ])
    dataset = load_dataset("grefcoco", tmp_path, "val")
    assert isinstance(dataset, GReferDataset) and dataset.skips.total == 0 and len(dataset) == 6
    both, also_both, right, circle, triangle, with_crowd = list(dataset)

    assert both.text == "all the squares" and also_both.text == "both squares"
    np.testing.assert_array_equal(both.mask, A | B)
    assert [box for box, _ in both.instances] == [(2.0, 2.0, 8.0, 8.0), (12.0, 10.0, 18.0, 16.0)]
    np.testing.assert_array_equal(both.instances[0][1], A)
    np.testing.assert_array_equal(both.instances[1][1], B)
    assert both.box == (2.0, 2.0, 8.0, 8.0)  # the first instance's, as for every dataset
    assert both.meta == {"split": "val", "ann_ids": [1, 2], "no_target": False, "category_ids": [1, 1]}

    assert [box for box, _ in right.instances] == [(12.0, 10.0, 18.0, 16.0)] and right.box == (12.0, 10.0, 18.0, 16.0)
    np.testing.assert_array_equal(right.mask, B)

    for nothing in (circle, triangle):
        assert not nothing.mask.any() and nothing.instances == () and nothing.box == (0.0, 0.0, 0.0, 0.0)
        assert nothing.meta["no_target"] is True and nothing.meta["ann_ids"] == []
        assert nothing.image.shape == (HEIGHT, WIDTH, 3)

    assert with_crowd.meta["ann_ids"] == [1] and len(with_crowd.instances) == 1
    assert len(load_dataset("grefcoco", tmp_path, "val", per="ref")) == 5


def test_broken_refs_are_skipped_and_counted(tmp_path: Path) -> None:
    _write(tmp_path, [
        _ref(0, [1, 2]),
        _ref(1, [1, 999]),  # missing annotation
        _ref(2, [1, -1]),  # -1 mixed with targets
        _ref(3, [1], no_target=True),  # the flag disagrees with the ids
        _ref(4, [-1], no_target="yes"),  # not a boolean
        _ref(5, [1.5]),  # not an id
        _ref(6, {"1": 1}),
        _ref(7, [100 + k for k in range(MAX_TARGETS + 1)]),
        _ref(8, [3]),  # only a crowd annotation
        _ref(9, [1], texts=()),
        _ref(10, [1], image_id=43),  # a file name outside the image folder
        _ref(11, [1, 4]),  # an instance with an empty mask, found when decoding
        "not a ref",
    ])
    dataset = GReferDataset(tmp_path / "grefcoco", "val", image_dir=tmp_path / "images/mscoco/images/train2014")
    assert len(dataset) == 2
    assert [sample.meta["ann_ids"] for sample in dataset] == [[1, 2]]
    assert dataset.skips.counts == {"missing annotation": 1, "malformed ref": 5, "too many targets": 1,
                                    "only crowd annotations": 1, "no sentences": 1, "path outside the dataset": 1,
                                    "empty mask": 1}


def test_the_pickled_form_loads_and_runs_no_code(tmp_path: Path) -> None:
    _write(tmp_path, [_ref(0, [-1]), _ref(1, [1, 2])], as_pickle=True)
    assert [len(s.instances) for s in load_dataset("grefcoco", tmp_path, "val")] == [0, 2]

    class Exploit:
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    (tmp_path / "grefcoco" / "grefs(unc).p").write_bytes(pickle.dumps([Exploit()]))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("grefcoco", tmp_path, "val")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content, message", [
    ("{", "is not valid JSON"),
    ('{"refs": []}', "holds a dict, expected a list of refs"),
    ("[]", "split 'val' not in"),
])
def test_an_unusable_refs_file_is_one_line_of_error(tmp_path: Path, content: str, message: str) -> None:
    _write(tmp_path, [])
    (tmp_path / "grefcoco" / "grefs(unc).json").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset("grefcoco", tmp_path, "val")
    assert "\n" not in str(error.value)
