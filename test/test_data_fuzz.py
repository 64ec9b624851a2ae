"""Property-based abuse of the dataset parsers: whatever JSON (or plain-data pickle) an annotation
holds, parsing it ends in a value or a ``BrokenEntry`` (a corrupt file: a one-line ``ValueError``),
and memory stays within the documented budget."""

from __future__ import annotations

import json
import pickle
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from training.data.images import MAX_IMAGE_PIXELS
from training.data.jsonl import JsonlDataset
from training.data.masks import (
    Rle,
    mask_to_rle,
    parse_box,
    parse_coco_segmentation,
    parse_polygons,
    parse_rle,
    union_mask,
    xywh_to_xyxy,
)
from training.data.refer import ReferDataset
from training.data.safe_pickle import load_plain_pickle
from training.data.skips import BrokenEntry

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SIZE = 8  # the images the fuzzed annotations are rasterised against

# What json.loads can produce, weighted towards the numbers that broke the parsers.
numbers = st.one_of(
    st.integers(-3, SIZE * SIZE + 2),
    st.integers(),
    st.sampled_from([2**63, 2**70, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, float("inf"), float("nan")]),
)
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=6))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=24)
rle_counts = st.text(alphabet=[chr(c) for c in range(44, 116)], max_size=16)
rles = st.fixed_dictionaries(
    {"size": st.one_of(st.lists(numbers, max_size=3), st.just([SIZE, SIZE]), json_values),
     "counts": st.one_of(st.lists(numbers, max_size=8), rle_counts, json_values)}
)
polygons = st.lists(st.lists(numbers, max_size=12), max_size=3)
segmentations = st.one_of(rles, st.lists(rles, max_size=3), polygons, json_values)


def _peak_bytes(work: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        work()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _rasterise(segmentation: Any) -> None:
    try:
        regions = parse_coco_segmentation(segmentation)
        for region in regions:
            if isinstance(region, Rle):
                assert region.height * region.width <= MAX_IMAGE_PIXELS
                assert region.to_mask(region.height, region.width).shape == (region.height, region.width)
        assert union_mask(regions, SIZE, SIZE).shape == (SIZE, SIZE)
    except BrokenEntry:
        pass


@FUZZ
@given(segmentations)
def test_segmentations_parse_or_are_broken_entries_within_the_memory_budget(segmentation: Any) -> None:
    # A valid RLE may declare up to the pixel budget (one byte per pixel as a mask); nothing more.
    assert _peak_bytes(lambda: _rasterise(segmentation)) < 2 * MAX_IMAGE_PIXELS


@FUZZ
@given(st.one_of(rles, json_values))
def test_rles_parse_or_are_broken_entries(value: Any) -> None:
    try:
        rle = parse_rle(value)
    except BrokenEntry:
        return
    assert 0 < rle.height * rle.width <= MAX_IMAGE_PIXELS


@FUZZ
@given(st.one_of(polygons, json_values))
def test_polygons_parse_or_are_broken_entries(value: Any) -> None:
    try:
        parse_polygons(value)
    except BrokenEntry:
        pass


@FUZZ
@given(st.one_of(st.lists(numbers, min_size=4, max_size=4), json_values))
def test_boxes_parse_or_are_broken_entries(value: Any) -> None:
    for parse in (parse_box, xywh_to_xyxy):
        try:
            x1, y1, x2, y2 = parse(value)
        except BrokenEntry:
            continue
        assert all(np.isfinite([x1, y1, x2, y2])) and x1 < x2 and y1 < y2


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    Image.fromarray(np.full((SIZE, SIZE, 3), 9, np.uint8)).save(root / "frame.png")
    Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)).save(root / "mask.png")
    return root


paths = st.one_of(st.sampled_from(["frame.png", "mask.png", "../frame.png", "/etc/hostname", "", "absent.png", "."]), json_values)
jsonl_records = st.fixed_dictionaries(
    {"image": paths, "text": st.one_of(st.just("the thing"), json_values)},
    optional={"mask": st.one_of(paths, rles, st.just(mask_to_rle(np.ones((SIZE, SIZE), bool)))), "ignore": st.one_of(paths, rles),
              "box": st.one_of(st.lists(numbers, max_size=5), json_values), "id": json_values,
              "meta": json_values, "reasoning": json_values},
)


@FUZZ
@given(st.lists(st.one_of(jsonl_records, json_values), min_size=1, max_size=4))
def test_jsonl_files_of_arbitrary_records_load_and_iterate(data_root: Path, records: list[Any]) -> None:
    path = data_root / "fuzz.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records))
    dataset = JsonlDataset(path)
    for sample in dataset:
        assert sample.mask.shape == (SIZE, SIZE)


ids = st.one_of(st.integers(0, 3), json_values, st.sampled_from([10**5000, frozenset({1})]))
refs = st.fixed_dictionaries(
    {"ref_id": ids, "ann_id": ids, "image_id": ids, "split": st.one_of(st.just("val"), json_values),
     "sentences": st.one_of(st.lists(st.fixed_dictionaries({"sent": st.one_of(st.just("x"), json_values)},
                                                            optional={"sent_id": ids, "reasoning": json_values})),
                            json_values)},
)
annotations = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 3), json_values), "segmentation": segmentations,
     "bbox": st.one_of(st.lists(numbers, max_size=5), json_values)},
)
images = st.fixed_dictionaries({"id": st.one_of(st.integers(0, 3), json_values)},
                               optional={"file_name": st.one_of(paths, json_values)})


@settings(FUZZ, max_examples=100)
@given(st.lists(refs, max_size=4), st.lists(annotations, max_size=4), st.lists(images, max_size=4))
def test_refer_folders_of_arbitrary_refs_load_and_iterate(data_root: Path, ref_list: list, anns: list, imgs: list) -> None:
    folder = data_root / "refer"
    folder.mkdir(exist_ok=True)
    (folder / "refs(unc).p").write_bytes(pickle.dumps([{"split": "val"}, *ref_list], protocol=2))
    (folder / "instances.json").write_text(json.dumps({"images": imgs, "annotations": anns}))
    for sample in ReferDataset(folder, "val", image_dir=data_root):
        assert sample.mask.shape == (SIZE, SIZE)


PLAIN = pickle.dumps([{"ref_id": 1, "sentences": [{"sent": "x", "tokens": ["x"]}], "s": {1, 2}, "f": 2.5}] * 2, protocol=2)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(PLAIN) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_corrupt_pickles_are_one_line_errors_within_their_size(data_root: Path, edits: list[tuple[int, int]]) -> None:
    data = bytearray(PLAIN)
    for position, byte in edits:
        data[position] = byte
    path = data_root / "corrupt.p"
    path.write_bytes(bytes(data))

    def load() -> None:
        try:
            load_plain_pickle(path)
        except ValueError as error:
            assert "\n" not in str(error)

    assert _peak_bytes(load) < 10 * 2**20
