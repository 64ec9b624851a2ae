"""A plain JSONL format for your own data (robot recordings, hand-labelled scenes).

One JSON object per line:

- ``image``: path relative to the JSONL file's folder, which must contain it (see ``paths``);
- ``text``: a referring expression or a list of them (one sample each);
- ``mask``: a COCO RLE dict ``{"size": [h, w], "counts": ...}`` or a PNG path (nonzero = target);
- optional ``box`` [x1, y1, x2, y2] in pixels (default: the mask's extent, exclusive max);
- optional ``ignore``: PNG path or RLE of pixels left out of the metrics;
- optional ``reasoning``: a string, or a list parallel to ``text``;
- optional ``id``: a string or number; sample ids become ``{id}:{k}`` (default: the line number);
- optional ``meta``: an object of strings, numbers and booleans copied to every sample of the line
  (for example the scene or lighting, to evaluate per condition with ``--group-by``).

See docs/datasets.md for an example.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lens_model.result import Box, mask_to_box
from training.data.dataset import Decoded, Per, Query, Target, TargetDataset
from training.data.fields import entry_id
from training.data.images import read_rgb
from training.data.lines import read_json_objects
from training.data.masks import Rle, checked_mask, clip_box, parse_box, parse_rle, read_png_mask
from training.data.paths import contained_file
from training.data.skips import BrokenEntry, SkipCounter

MaskSource = Rle | Path


@dataclass(frozen=True)
class JsonlAnnotation:
    mask: MaskSource
    box: Box | None
    ignore: MaskSource | None


class JsonlDataset(TargetDataset[JsonlAnnotation]):
    def __init__(
        self,
        path: Path,
        *,
        source: str = "jsonl",
        per: Per = "sentence",
        skips: SkipCounter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        path = Path(path)
        skips = skips or SkipCounter(f"{source}/{path.name}")
        targets = []
        root = path.parent.resolve()
        for line, record in read_json_objects(path, skips):
            try:
                targets.append(_target(record, line, root))
            except BrokenEntry as error:
                skips.skip_error(error, f"{path.name}:{line}")
        super().__init__(targets, source=source, per=per, skips=skips, rng=rng)

    def decode(self, target: Target[JsonlAnnotation]) -> Decoded:
        image = read_rgb(target.image_path)
        height, width = image.shape[:2]
        mask = checked_mask(_read_mask(target.annotation.mask, height, width), height, width)
        box = mask_to_box(mask) if target.annotation.box is None else clip_box(target.annotation.box, height, width)
        ignore = None if target.annotation.ignore is None else _read_mask(target.annotation.ignore, height, width)
        return Decoded(image=image, mask=mask, box=box, ignore=ignore if ignore is not None and ignore.any() else None)


def _read_mask(source: MaskSource, height: int, width: int) -> np.ndarray:
    mask = source.to_mask(height, width) if isinstance(source, Rle) else read_png_mask(source)
    if mask.shape != (height, width):
        raise BrokenEntry("mask size mismatch", f"mask {mask.shape}, image {height}x{width}")
    return mask


def _mask_source(value: Any, root: Path, field: str) -> MaskSource:
    if isinstance(value, dict):
        return parse_rle(value)
    if isinstance(value, str) and value:
        return contained_file(root, value, "missing mask")
    raise BrokenEntry("missing field", f"'{field}' must be an RLE dict or a PNG path")


def _meta(record: dict[str, Any]) -> dict[str, str | int | float | bool]:
    meta = record.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(v, (str, int, float, bool)) for v in meta.values()):
        raise BrokenEntry("bad meta", "'meta' must be an object of strings, numbers and booleans")
    return meta


def _queries(record: dict[str, Any], base_id: str) -> tuple[Query, ...]:
    text, reasoning = record.get("text"), record.get("reasoning")
    texts = [text] if isinstance(text, str) else text if isinstance(text, list) else []
    if isinstance(reasoning, list) and len(reasoning) != len(texts):
        raise BrokenEntry("bad reasoning", f"{len(reasoning)} reasoning strings for {len(texts)} texts")
    reasons = reasoning if isinstance(reasoning, list) else [reasoning] * len(texts)
    meta = _meta(record)
    queries = tuple(
        Query(t.strip(), f"{base_id}:{k}", r if isinstance(r, str) else None, meta)
        for k, (t, r) in enumerate(zip(texts, reasons, strict=True))
        if isinstance(t, str) and t.strip()
    )
    if not queries:
        raise BrokenEntry("no query", "'text' must be a non-empty string or list of strings")
    return queries


def _target(record: dict[str, Any], line: int, root: Path) -> Target[JsonlAnnotation]:
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise BrokenEntry("missing field", "'image' must be a path")
    image_path = contained_file(root, image, "missing image")
    base_id = entry_id(record.get("id", line), "id")
    annotation = JsonlAnnotation(
        mask=_mask_source(record.get("mask"), root, "mask"),
        box=None if record.get("box") is None else parse_box(record["box"]),
        ignore=None if record.get("ignore") is None else _mask_source(record["ignore"], root, "ignore"),
    )
    return Target(image_path, image, base_id, _queries(record, base_id), annotation)
