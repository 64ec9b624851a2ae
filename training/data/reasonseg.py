"""ReasonSeg: ``ReasonSeg/{train,val,test}/*.jpg``, each with a LabelMe-style ``*.json``.

The JSON holds ``shapes`` (``label``, ``points``), ``text`` (a query or a list of them) and
``is_sentence``. The mask follows LISA's rasteriser: polygons painted in descending pixel-area order
(outline + fill, vertices truncated to int), "flag" shapes skipped, shapes whose label contains
"ignore" painted as ignore. Unlike the LENS evaluation, ignore pixels stay out of the metrics
(``Sample.ignore``) and every query is a sample, not only the first.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lens_model.result import mask_to_box
from training.data.dataset import Decoded, Per, Query, Target, TargetDataset
from training.data.fields import brief
from training.data.images import read_rgb
from training.data.lines import MALFORMED_JSON, error_line
from training.data.masks import check_polygons, checked_mask, parse_polygon
from training.data.paths import contained_file, first_contained_file
from training.data.skips import BrokenEntry, SkipCounter

TARGET = 1
IGNORE = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass(frozen=True)
class LabelledPolygon:
    value: int  # TARGET or IGNORE
    points: tuple[float, ...]  # flat x1, y1, x2, y2, ...


class ReasonSegDataset(TargetDataset[tuple[LabelledPolygon, ...]]):
    """All images of one split folder, e.g. ``DATA/reason_seg/ReasonSeg/val``."""

    def __init__(
        self,
        folder: Path,
        *,
        source: str = "reasonseg",
        per: Per = "sentence",
        skips: SkipCounter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"ReasonSeg split folder {folder} does not exist")
        skips = skips or SkipCounter(f"{source}/{folder.name}")
        targets = []
        root = folder.resolve()
        for json_path in sorted(root.glob("*.json")):
            try:
                targets.append(_target(root, json_path.name, folder.name))
            except BrokenEntry as error:
                skips.skip_error(error, json_path.name)
        super().__init__(targets, source=source, per=per, skips=skips, rng=rng)

    def decode(self, target: Target[tuple[LabelledPolygon, ...]]) -> Decoded:
        image = read_rgb(target.image_path)
        height, width = image.shape[:2]
        check_polygons([p.points for p in target.annotation], height, width)
        labels = label_map(target.annotation, height, width)
        mask = checked_mask(labels == TARGET, height, width)
        ignore = labels == IGNORE
        return Decoded(image=image, mask=mask, box=mask_to_box(mask), ignore=ignore if ignore.any() else None)


def label_map(polygons: tuple[LabelledPolygon, ...], height: int, width: int) -> np.ndarray:
    """0 background, TARGET, IGNORE; larger polygons first so smaller ones paint over them."""
    vertices = [np.asarray(p.points).reshape(-1, 2).astype(np.int32) for p in polygons]
    areas = [painted_area(points, height, width) for points in vertices]
    labels = np.zeros((height, width), dtype=np.uint8)
    for index in np.argsort(areas, kind="stable")[::-1]:
        _paint(labels, vertices[index], polygons[index].value)
    return labels


def painted_area(points: np.ndarray, height: int, width: int) -> int:
    """The pixels ``_paint`` sets on a height x width canvas, counted on a canvas cut to the polygon's
    bounding box (drawing is translation-invariant and never leaves that box), so the cost follows
    the polygon's size rather than the image's."""
    x0, y0 = np.maximum(points.min(axis=0), 0)
    x1, y1 = np.minimum(points.max(axis=0) + 1, (width, height))
    if x1 <= x0 or y1 <= y0:
        return 0
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    _paint(canvas, (points - (x0, y0)).astype(np.int32), 1)
    return int(canvas.sum())


def _paint(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    cv2.polylines(canvas, [points], True, value, 1)
    cv2.fillPoly(canvas, [points], value)


def _target(root: Path, name: str, split: str) -> Target[tuple[LabelledPolygon, ...]]:
    json_path = contained_file(root, name, "missing json")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, *MALFORMED_JSON) as error:
        raise BrokenEntry("malformed json", error_line(error)) from error
    if not isinstance(data, dict):
        raise BrokenEntry("malformed json", "top level is not an object")
    image_path = first_contained_file(root, (json_path.stem + s for s in IMAGE_SUFFIXES), "missing image")
    texts = _texts(data.get("text"))
    if not texts:
        raise BrokenEntry("no query")
    polygons = _polygons(data.get("shapes"))
    if not any(p.value == TARGET for p in polygons):
        raise BrokenEntry("empty mask", "no target polygon")
    meta = {"is_sentence": bool(data.get("is_sentence", False))}
    stem = json_path.stem
    queries = tuple(Query(text, sample_id=f"{stem}:{i}", meta=meta) for i, text in enumerate(texts))
    return Target(image_path, stem, stem, queries, polygons, {"split": split})


def _polygons(shapes: Any) -> tuple[LabelledPolygon, ...]:
    if not isinstance(shapes, list):
        raise BrokenEntry("malformed json", "'shapes' is not a list")
    polygons = []
    for shape in shapes:
        label = _label(shape.get("label", "")) if isinstance(shape, dict) else ""
        if label == "flag":
            continue
        points = shape.get("points") if isinstance(shape, dict) else None
        if (
            not isinstance(points, list)
            or len(points) < 3
            or not all(isinstance(p, list) and len(p) == 2 for p in points)
        ):
            raise BrokenEntry("bad polygon", f"shape {brief(label)} needs at least three [x, y] points")
        flat = parse_polygon([coordinate for point in points for coordinate in point])
        polygons.append(LabelledPolygon(IGNORE if "ignore" in label else TARGET, flat))
    return tuple(polygons)


def _label(value: Any) -> str:
    return (value if isinstance(value, str) else brief(value)).lower()


def _texts(value: Any) -> list[str]:
    """The query or queries (a string or a list of strings), stripped, empty ones dropped."""
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [item.strip() for item in items if isinstance(item, str) and item.strip()]
