"""Masks and boxes: COCO polygons and RLE, PNG masks, mask boxes, validation.

pycocotools rasterises polygons and encodes masks; RLE strings are parsed and expanded here (see
``_decode_compressed_counts``).

Annotations are parsed into ``Polygons`` / ``Rle`` when a dataset is indexed (structure only, cheap)
and rasterised with ``to_mask(height, width)`` when a sample is built, against the decoded image's
real size. Everything wrong with one annotation raises ``BrokenEntry``, and so does an annotation
whose mask would take more memory than the image budget allows: an RLE may declare at most
``MAX_IMAGE_PIXELS`` pixels, and a region's polygons may trace at most ``MAX_OUTLINE_PERIMETERS``
times the image's perimeter (pycocotools walks every pixel of every edge at 5x resolution, about
50 bytes per pixel of outline).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from lens_model.result import Box
from training.data.fields import brief
from training.data.images import DECODE_ERRORS, MAX_IMAGE_PIXELS, check_pixel_budget
from training.data.skips import BrokenEntry

# Polygon vertices may overshoot the image by this fraction of its side (+1 px) before the polygon is
# treated as belonging to another image size; small overshoots are common in hand-drawn annotations.
OUT_OF_BOUNDS_TOLERANCE = 0.02
# Longest run of 5-bit groups in one compressed RLE count we accept (60 bits fit in int64).
MAX_RLE_GROUPS = 12
# Longest outline (sum of the edges' longer side, in pixels), as a multiple of 2 * (height + width).
MAX_OUTLINE_PERIMETERS = 32


@dataclass(frozen=True)
class Polygons:
    """One object's polygons, each a flat (x1, y1, x2, y2, ...) tuple in pixels."""

    coordinates: tuple[tuple[float, ...], ...]

    def to_mask(self, height: int, width: int) -> np.ndarray:
        check_polygons(self.coordinates, height, width)
        rles = mask_util.frPyObjects([list(p) for p in self.coordinates], height, width)
        return runs_to_mask(_decode_compressed_counts(mask_util.merge(rles)["counts"]), height, width)


@dataclass(frozen=True)
class Rle:
    """A validated COCO run-length encoding with compressed counts."""

    counts: bytes
    height: int
    width: int

    def to_mask(self, height: int, width: int) -> np.ndarray:
        if (self.height, self.width) != (height, width):
            raise BrokenEntry("mask size mismatch", f"RLE is {self.height}x{self.width}, image {height}x{width}")
        return runs_to_mask(_decode_compressed_counts(self.counts), height, width)


Region = Polygons | Rle


def parse_polygon(value: Any) -> tuple[float, ...]:
    """A flat COCO polygon, checked for shape and finiteness (not yet for bounds)."""
    if not isinstance(value, (list, tuple)) or len(value) % 2:
        raise BrokenEntry("bad polygon", f"expected an even-length list of numbers, got {brief(value)}")
    try:
        coordinates = tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError) as error:
        raise BrokenEntry("bad polygon", str(error)) from error
    if not all(math.isfinite(v) for v in coordinates):
        raise BrokenEntry("bad polygon", "non-finite coordinate")
    return coordinates


def parse_polygons(value: Any) -> Polygons:
    """COCO polygon list. Polygons with fewer than three vertices have no area and are dropped
    (pycocotools would otherwise read a 4-number polygon as a box)."""
    if not isinstance(value, list):
        raise BrokenEntry("bad polygon", f"expected a list of polygons, got {brief(value)}")
    polygons = tuple(p for p in (parse_polygon(v) for v in value) if len(p) >= 6)
    if not polygons:
        raise BrokenEntry("bad polygon", "no polygon with at least three vertices")
    return Polygons(polygons)


def check_polygons(polygons: Sequence[Sequence[float]], height: int, width: int) -> None:
    """Refuse polygons that lie outside a ``height`` x ``width`` image or whose outline is too long
    to rasterise within the memory budget (see the module docstring)."""
    x_slack = 1 + OUT_OF_BOUNDS_TOLERANCE * width
    y_slack = 1 + OUT_OF_BOUNDS_TOLERANCE * height
    outline = 0.0
    for polygon in polygons:
        vertices = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        (x_min, y_min), (x_max, y_max) = vertices.min(axis=0), vertices.max(axis=0)
        if x_min < -x_slack or x_max > width + x_slack or y_min < -y_slack or y_max > height + y_slack:
            raise BrokenEntry("polygon out of bounds", f"vertices beyond a {height}x{width} image")
        outline += float((np.abs(np.roll(vertices, -1, axis=0) - vertices).max(axis=1) + 1).sum())
    if outline > MAX_OUTLINE_PERIMETERS * 2 * (height + width):
        raise BrokenEntry("polygon too long", f"outline of {outline:.0f} px in a {height}x{width} image")


def _decode_compressed_counts(counts: bytes) -> np.ndarray:
    """Run lengths of a COCO compressed RLE string (a vectorised port of pycocotools' rleFrString).

    Masks are expanded from these runs here rather than by pycocotools' C decoder, which does not
    bound-check the runs (a corrupt string could write past its buffer) and whose Python wrapper
    relies on numpy behaviour deprecated in numpy 2.
    """
    values = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if values.size == 0 or values.min() < 0 or values.max() > 63:
        raise BrokenEntry("bad rle", "characters outside the RLE alphabet")
    more = (values & 0x20) != 0
    if more[-1]:
        raise BrokenEntry("bad rle", "truncated counts")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > MAX_RLE_GROUPS:
        raise BrokenEntry("bad rle", "count too large")
    position = np.arange(values.size) - np.repeat(starts, lengths)
    numbers = np.add.reduceat((values & 0x1F) << (5 * position), starts)
    negative = (values[ends] & 0x10) != 0
    numbers = np.where(negative, numbers - np.left_shift(1, 5 * lengths), numbers)
    # From the fourth count on, each is stored as the difference to the count two places back.
    runs = numbers.copy()
    runs[1::2] = np.cumsum(numbers[1::2])
    runs[2::2] = np.cumsum(numbers[2::2])
    return runs


def runs_to_mask(runs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Alternating background/foreground run lengths (column-major, COCO order) to a bool mask."""
    values = np.arange(len(runs)) % 2 == 1
    return np.ascontiguousarray(np.repeat(values, runs).reshape((height, width), order="F"))


def parse_rle(value: Any) -> Rle:
    """A COCO RLE dict ``{"size": [h, w], "counts": str | bytes | list[int]}`` of at most
    ``MAX_IMAGE_PIXELS``, checked so that its runs are non-negative and cover exactly h * w pixels."""
    try:
        height, width = (int(v) for v in value["size"])
        counts = value["counts"]
    except (TypeError, KeyError, ValueError, OverflowError) as error:
        raise BrokenEntry("bad rle", f"expected {{'size': [h, w], 'counts': ...}}: {brief(error)}") from error
    if height <= 0 or width <= 0:
        raise BrokenEntry("bad rle", f"size {brief([height, width])}")
    area = height * width
    if area > MAX_IMAGE_PIXELS:
        raise BrokenEntry("mask too large", f"RLE size {brief([height, width])} is over {MAX_IMAGE_PIXELS:,} pixels")
    # No mask has more than area + 1 runs (only the first may be empty), none longer than the area;
    # checked before any array is built, and it keeps the sum below far from int64 overflow.
    if isinstance(counts, list):
        if len(counts) > area + 1 or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= area for c in counts
        ):
            raise BrokenEntry("bad rle", f"uncompressed counts must be at most {area + 1} integers from 0 to {area}")
        runs = np.asarray(counts, dtype=np.int64)
    elif isinstance(counts, (str, bytes)):
        if len(counts) > MAX_RLE_GROUPS * (area + 1):
            raise BrokenEntry("bad rle", f"counts longer than any {height}x{width} mask needs")
        try:
            counts = counts.encode("ascii") if isinstance(counts, str) else counts
        except UnicodeEncodeError as error:
            raise BrokenEntry("bad rle", "characters outside the RLE alphabet") from error
        runs = _decode_compressed_counts(counts)
    else:
        raise BrokenEntry("bad rle", f"counts of type {type(counts).__name__}")
    if runs.size == 0 or runs.size > area + 1 or runs.min() < 0 or runs.max() > area or runs.sum() != area:
        raise BrokenEntry("bad rle", f"runs do not cover the {height}x{width} mask")
    if isinstance(counts, list):
        counts = mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width)["counts"]
    return Rle(counts=counts, height=height, width=width)


def parse_coco_segmentation(value: Any) -> list[Region]:
    """A COCO ``segmentation``: a polygon list, an RLE dict, or a list of RLE dicts (their union)."""
    if isinstance(value, dict):
        return [parse_rle(value)]
    if not isinstance(value, list) or not value:
        raise BrokenEntry("empty segmentation", brief(value))
    if all(isinstance(item, dict) for item in value):
        return [parse_rle(item) for item in value]
    return [parse_polygons(value)]


def union_mask(regions: Sequence[Region], height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for region in regions:
        mask |= region.to_mask(height, width)
    return mask


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE with string counts (JSON-serialisable)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def read_png_mask(path: Path) -> np.ndarray:
    """A mask image as bool, nonzero = target. Palette images use their indices; for RGB(A) any
    nonzero colour channel counts and alpha is ignored."""
    if not path.is_file():
        raise BrokenEntry("missing mask", str(path))
    try:
        with Image.open(path) as image:
            check_pixel_budget(image, path, "mask")
            mode = image.mode
            pixels = np.array(image)
    except DECODE_ERRORS as error:
        raise BrokenEntry("undecodable mask", f"{path}: {error}") from error
    if pixels.ndim == 3:
        if mode.endswith("A"):
            pixels = pixels[..., :-1]
        return np.asarray(pixels.any(axis=2))
    return np.asarray(pixels != 0)


def checked_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape != (height, width):
        raise BrokenEntry("mask size mismatch", f"mask {mask.shape}, image {height}x{width}")
    if not mask.any():
        raise BrokenEntry("empty mask")
    return mask


def parse_box(value: Any) -> Box:
    """Four finite numbers (x1, y1, x2, y2) with x2 > x1 and y2 > y1."""
    x1, y1, x2, y2 = _four_numbers(value, "[x1, y1, x2, y2]")
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise BrokenEntry("bad box", f"degenerate box {brief(value)}")
    return x1, y1, x2, y2


def xywh_to_xyxy(value: Any) -> Box:
    x, y, w, h = _four_numbers(value, "[x, y, w, h]")
    return parse_box((x, y, x + w, y + h))


def _four_numbers(value: Any, form: str) -> tuple[float, float, float, float]:
    if isinstance(value, (list, tuple)) and len(value) == 4:
        try:
            a, b, c, d = (float(v) for v in value)
            return a, b, c, d
        except (TypeError, ValueError, OverflowError):
            pass
    raise BrokenEntry("bad box", f"expected {form}, got {brief(value)}")


def clip_box(box: Box, height: int, width: int) -> Box:
    x1, y1, x2, y2 = box
    clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise BrokenEntry("bad box", f"box {box} lies outside the {height}x{width} image")
    return clipped
