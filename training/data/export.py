"""Writing samples out in the supported on-disk formats.

``write_jsonl`` converts any dataset (for example your own, after filtering) to the plain JSONL
format. ``write_reasonseg`` and ``write_groundingsuite`` reproduce those benchmarks' layouts, which
the tests and benchmarks use to exercise the loaders on generated data. ReasonSeg stores polygons,
so masks are traced with their outer contours (holes are lost); the other two formats are exact.
All three hold one object per expression, so samples of several objects or none are left out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from training.data.masks import mask_to_rle
from training.data.sample import Sample


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def single_object(samples: Iterable[Sample]) -> Iterator[Sample]:
    """The samples with exactly one referent (what these formats can hold)."""
    return (sample for sample in samples if len(sample.instances) == 1)


def write_jsonl(samples: Iterable[Sample], path: Path, *, mask_format: Literal["rle", "png"] = "rle") -> int:
    """One line per sample; images (PNG) go to ``images/`` and PNG masks to ``masks/`` next to the
    file; the scalar entries of ``meta`` are kept. Returns the number of lines written (samples of
    one object)."""
    path = Path(path)
    folder = path.parent
    (folder / "images").mkdir(parents=True, exist_ok=True)
    written_images: set[str] = set()
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for sample in single_object(samples):
            image = f"images/{safe_name(sample.source)}_{safe_name(sample.image_id)}.png"
            if image not in written_images:
                Image.fromarray(sample.image).save(folder / image)
                written_images.add(image)
            record: dict[str, Any] = {
                "id": sample.sample_id,
                "image": image,
                "text": sample.text,
                "box": list(sample.box),
            }
            record["mask"] = _mask_value(sample.mask, folder, f"{safe_name(sample.sample_id)}", mask_format)
            if sample.ignore is not None:
                record["ignore"] = _mask_value(
                    sample.ignore, folder, f"{safe_name(sample.sample_id)}_ignore", mask_format
                )
            if sample.reasoning is not None:
                record["reasoning"] = sample.reasoning
            meta = {k: v for k, v in sample.meta.items() if isinstance(v, (str, int, float, bool))}
            if meta:
                record["meta"] = meta
            handle.write(json.dumps(record) + "\n")
            count += 1
    return count


def _mask_value(mask: np.ndarray, folder: Path, stem: str, mask_format: str) -> Any:
    if mask_format == "rle":
        return mask_to_rle(mask)
    (folder / "masks").mkdir(exist_ok=True)
    relative = f"masks/{stem}.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / relative)
    return relative


def write_reasonseg(samples: Iterable[Sample], folder: Path) -> int:
    """One ``<ref_id>.jpg`` + ``<ref_id>.json`` per target, with all its texts. Returns the number of targets."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[Sample]] = {}
    for sample in single_object(samples):
        groups.setdefault(sample.ref_id, []).append(sample)
    for ref_id, group in groups.items():
        first = group[0]
        shapes = [
            {"label": "target", "points": points, "shape_type": "polygon"} for points in _outer_contours(first.mask)
        ]
        if first.ignore is not None:
            shapes += [
                {"label": "ignore", "points": points, "shape_type": "polygon"}
                for points in _outer_contours(first.ignore)
            ]
        record = {
            "text": [s.text for s in group],
            "is_sentence": bool(first.meta.get("is_sentence", False)),
            "shapes": shapes,
        }
        stem = safe_name(ref_id)
        Image.fromarray(first.image).save(folder / f"{stem}.jpg", quality=95)
        (folder / f"{stem}.json").write_text(json.dumps(record), encoding="utf-8")
    return len(groups)


def _outer_contours(mask: np.ndarray) -> list[Any]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [contour.reshape(-1, 2).tolist() for contour in contours if len(contour) >= 3]


def write_groundingsuite(samples: Iterable[Sample], jsonl_path: Path, image_root: Path) -> int:
    """GroundingSuite-Eval lines with RLE segmentations; images go to ``image_root``."""
    jsonl_path, image_root = Path(jsonl_path), Path(image_root)
    image_root.mkdir(parents=True, exist_ok=True)
    jsonl_path.parent.mkdir(parents=True, exist_ok=True)
    written_images: set[str] = set()
    count = 0
    with open(jsonl_path, "w", encoding="utf-8") as handle:
        for idx, sample in enumerate(single_object(samples)):
            name = f"{safe_name(sample.source)}_{safe_name(sample.image_id)}.jpg"
            if name not in written_images:
                Image.fromarray(sample.image).save(image_root / name, quality=95)
                written_images.add(name)
            record = {
                "idx": idx,
                "image_path": name,
                "box": list(sample.box),
                "label": sample.text,
                "caption": sample.text,
                "segmentation": mask_to_rle(sample.mask),
            }
            handle.write(json.dumps(record) + "\n")
            count += 1
    return count
