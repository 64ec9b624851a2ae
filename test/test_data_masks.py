"""Mask, box and image helpers: RLE/polygon decoding, validation, PNG masks, image decoding."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from pycocotools import mask as mask_util

from lens_model.result import mask_to_box
from training.data.images import read_rgb
from training.data.masks import (
    Polygons,
    _decode_compressed_counts,
    checked_mask,
    clip_box,
    mask_to_rle,
    parse_box,
    parse_coco_segmentation,
    parse_polygons,
    parse_rle,
    read_png_mask,
    runs_to_mask,
    union_mask,
    xywh_to_xyxy,
)
from training.data.skips import BrokenEntry

small_masks = arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12)))


@settings(max_examples=60, deadline=None)
@given(small_masks)
def test_rle_round_trip(mask: np.ndarray) -> None:
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str)
    parsed = parse_rle(rle)
    np.testing.assert_array_equal(parsed.to_mask(*mask.shape), mask)


@settings(max_examples=60, deadline=None)
@given(small_masks)
def test_compressed_count_decoder_matches_pycocotools(mask: np.ndarray) -> None:
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    runs = _decode_compressed_counts(encoded["counts"])
    np.testing.assert_array_equal(runs_to_mask(runs, *mask.shape), mask)
    assert runs.sum() == mask.size and runs[1::2].sum() == mask_util.area(encoded)


def test_uncompressed_rle_counts_are_accepted() -> None:
    rle = parse_rle({"size": [2, 3], "counts": [1, 2, 3]})  # column-major: 1 off, 2 on, 3 off
    np.testing.assert_array_equal(rle.to_mask(2, 3), np.array([[False, True, False], [True, False, False]]))


@pytest.mark.parametrize(
    "value",
    [
        {"size": [2, 2], "counts": [1, 2]},  # covers 3 of 4 pixels
        {"size": [2, 2], "counts": [-1, 5]},
        {"size": [2, 2], "counts": [True, 3]},
        {"size": [2, 2], "counts": "!!"},  # outside the alphabet
        {"size": [2, 2], "counts": "0P"},  # 'P' sets the continuation bit: truncated
        {"size": [2, 2], "counts": "é4"},
        {"size": [0, 2], "counts": []},
        {"size": [2], "counts": "04"},
        {"counts": "04"},
        {"size": [2, 2], "counts": 4},
        "not a dict",
    ],
)
def test_corrupt_rles_are_rejected_before_pycocotools_sees_them(value: object) -> None:
    with pytest.raises(BrokenEntry) as error:
        parse_rle(value)
    assert error.value.reason == "bad rle"


def test_rle_of_another_size_does_not_fit_the_image() -> None:
    rle = parse_rle(mask_to_rle(np.ones((4, 5), dtype=bool)))
    with pytest.raises(BrokenEntry, match="mask size mismatch"):
        rle.to_mask(5, 4)


def test_polygons_are_unioned_and_binarised() -> None:
    square = [1, 1, 5, 1, 5, 5, 1, 5]
    overlapping = [3, 3, 8, 3, 8, 8, 3, 8]
    mask = parse_polygons([square, overlapping]).to_mask(10, 10)
    assert mask.dtype == np.bool_
    expected = np.zeros((10, 10), bool)
    expected[1:5, 1:5] = True  # pycocotools fills the pixels whose centres lie inside
    expected[3:8, 3:8] = True
    np.testing.assert_array_equal(mask, expected)


def test_degenerate_polygons_are_dropped_not_read_as_boxes() -> None:
    polygons = parse_polygons([[1, 1, 5, 5], [0, 0, 4, 0, 4, 4]])
    assert polygons.coordinates == ((0.0, 0.0, 4.0, 0.0, 4.0, 4.0),)
    with pytest.raises(BrokenEntry, match="bad polygon"):
        parse_polygons([[1, 1, 5, 5]])


@pytest.mark.parametrize("value", [[[1, 2, 3, 4, 5]], [[0, 0, 1, "x", 2, 2]], [[0, 0, float("nan"), 1, 2, 2]], [7]])
def test_malformed_polygons_are_rejected(value: object) -> None:
    with pytest.raises(BrokenEntry, match="bad polygon"):
        parse_polygons(value)


def test_polygons_far_outside_the_image_are_rejected_small_overshoot_is_tolerated() -> None:
    Polygons(((-1.0, -1.0, 10.5, 0.0, 10.5, 10.5),)).to_mask(10, 10)
    with pytest.raises(BrokenEntry, match="polygon out of bounds"):
        Polygons(((0.0, 0.0, 50.0, 0.0, 50.0, 5.0),)).to_mask(10, 10)


def test_coco_segmentation_forms() -> None:
    rle = mask_to_rle(np.eye(4, dtype=bool))
    assert len(parse_coco_segmentation(rle)) == 1
    both = union_mask(parse_coco_segmentation([rle, mask_to_rle(np.fliplr(np.eye(4, dtype=bool)))]), 4, 4)
    assert both.sum() == 8
    with pytest.raises(BrokenEntry, match="empty segmentation"):
        parse_coco_segmentation([])


def test_mask_box_has_exclusive_max() -> None:
    mask = np.zeros((6, 8), bool)
    mask[2:4, 3:7] = True
    assert mask_to_box(mask) == (3.0, 2.0, 7.0, 4.0)
    with pytest.raises(ValueError):
        mask_to_box(np.zeros((3, 3), bool))


def test_checked_mask() -> None:
    with pytest.raises(BrokenEntry, match="empty mask"):
        checked_mask(np.zeros((2, 2), bool), 2, 2)
    with pytest.raises(BrokenEntry, match="mask size mismatch"):
        checked_mask(np.ones((2, 3), bool), 3, 2)


def test_boxes() -> None:
    assert xywh_to_xyxy([1, 2, 3, 4]) == (1.0, 2.0, 4.0, 6.0)
    assert clip_box((-5.0, 2.0, 50.0, 8.0), 10, 20) == (0.0, 2.0, 20.0, 8.0)
    for bad in ([1, 2, 1, 5], [0, 0, float("inf"), 1], "abcd", [1, 2, 3]):
        with pytest.raises(BrokenEntry, match="bad box"):
            parse_box(bad)
    with pytest.raises(BrokenEntry, match="bad box"):
        clip_box((30.0, 0.0, 40.0, 5.0), 10, 20)


def test_png_masks_in_every_mode(tmp_path) -> None:
    grey = np.zeros((3, 4), np.uint8)
    grey[1, 2] = 7
    Image.fromarray(grey).save(tmp_path / "l.png")
    palette = Image.fromarray(grey, mode="P")
    palette.putpalette([255, 255, 255] * 256)  # index 0 is white: indices, not colours, decide
    palette.save(tmp_path / "p.png")
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 3] = 255  # opaque black everywhere: alpha must not count
    rgba[1, 2, 0] = 200
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    for name in ("l.png", "p.png", "rgba.png"):
        np.testing.assert_array_equal(read_png_mask(tmp_path / name), grey != 0)
    with pytest.raises(BrokenEntry, match="missing mask"):
        read_png_mask(tmp_path / "absent.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(BrokenEntry, match="undecodable mask"):
        read_png_mask(tmp_path / "bad.png")


def test_read_rgb(tmp_path) -> None:
    Image.fromarray(np.full((5, 6), 9, np.uint8)).save(tmp_path / "grey.png")
    image = read_rgb(tmp_path / "grey.png")
    assert image.shape == (5, 6, 3) and image.dtype == np.uint8 and image.flags.writeable
    with pytest.raises(BrokenEntry, match="missing image"):
        read_rgb(tmp_path / "absent.jpg")
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(BrokenEntry, match="undecodable image"):
        read_rgb(tmp_path / "garbage.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:600])
    with pytest.raises(BrokenEntry, match="undecodable image"):
        read_rgb(tmp_path / "truncated.jpg")


@pytest.mark.parametrize(
    "value,reason",
    [
        ({"size": [2, 2], "counts": [2**70]}, "bad rle"),  # past int64
        ({"size": [2, 2], "counts": [2**62, 2**62, 2**62, 2**62 + 4]}, "bad rle"),  # int64 sum wraps to 4
        ({"size": [float("inf"), 2], "counts": "04"}, "bad rle"),  # JSON's Infinity
        ({"size": [float("nan"), 2], "counts": "04"}, "bad rle"),
        ({"size": [10**400, 1], "counts": [1]}, "mask too large"),
        ({"size": [100_000, 100_000], "counts": [10**10]}, "mask too large"),
        ({"size": [2, 2], "counts": "4" + "0" * 100}, "bad rle"),  # longer than any 2x2 mask needs
    ],
)
def test_hostile_rle_values_are_broken_entries(value: object, reason: str) -> None:
    with pytest.raises(BrokenEntry) as error:
        parse_rle(value)
    assert error.value.reason == reason


def test_hostile_coordinates_are_broken_entries() -> None:
    for polygon in ([[0, 0, 10**400, 0, 5, 5]], [[0, 0, 1e400, 0, 5, 5]]):
        with pytest.raises(BrokenEntry, match="bad polygon"):
            parse_polygons(polygon)
    for box in ([0, 0, 10**400, 5], [0, 0, 1e400, 5], "1234", {"x": 1}, [[1], 2, 3, 4]):
        with pytest.raises(BrokenEntry, match="bad box"):
            parse_box(box)
        with pytest.raises(BrokenEntry, match="bad box"):
            xywh_to_xyxy(box)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(BrokenEntry, match="bad polygon"):
        parse_polygons([deep])  # its message describes the value without recursing through it


def test_a_polygon_tracing_too_long_an_outline_is_refused_before_rasterising() -> None:
    # 20,000 vertices zigzagging across a 640 px wide image: pycocotools would take about 660 MB.
    zigzag = np.stack([np.tile([0.0, 640.0], 10_000), np.linspace(0, 480, 20_000)], axis=1).ravel()
    with pytest.raises(BrokenEntry, match="polygon too long"):
        Polygons((tuple(zigzag),)).to_mask(480, 640)
    star = (320.0, 0.0, 400.0, 480.0, 0.0, 160.0, 640.0, 160.0, 240.0, 480.0)  # self-crossing, well within the bound
    assert Polygons((star,)).to_mask(480, 640).any()


def _blank_png(path, width: int, height: int) -> None:
    """A 1-bit PNG of ``width`` x ``height`` black pixels, a few kB however large its size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (height * (1 + (width + 7) // 8)), 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_images_and_png_masks_over_the_pixel_budget_are_refused_before_decoding(tmp_path) -> None:
    _blank_png(tmp_path / "big.png", 10_000, 6_000)  # 60 MP: 180 MB as RGB, 4 kB on disk
    assert (tmp_path / "big.png").stat().st_size < 100_000
    with pytest.raises(BrokenEntry, match="image too large"):
        read_rgb(tmp_path / "big.png")
    with pytest.raises(BrokenEntry, match="mask too large"):
        read_png_mask(tmp_path / "big.png")
    _blank_png(tmp_path / "small.png", 5, 3)
    assert read_rgb(tmp_path / "small.png").shape == (3, 5, 3)
