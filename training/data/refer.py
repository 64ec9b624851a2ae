"""RefCOCO, RefCOCO+ and RefCOCOg (and the synthetic set) in the refer toolkit's layout.

A dataset folder holds ``refs(<split_by>).p`` (a pickled list of refs, each with a split, an
``ann_id`` and its sentences) and ``instances.json`` (COCO images, annotations, categories).
Each referring sentence is one sample; the target is the COCO annotation's polygons or RLE,
OR-ed and binarised, and its ``bbox`` converted to x1, y1, x2, y2.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data.dataset import Decoded, Per, Query, Target, TargetDataset
from training.data.images import read_rgb
from training.data.masks import Region, checked_mask, parse_coco_segmentation, union_mask, xywh_to_xyxy
from training.data.safe_pickle import load_plain_pickle
from training.data.sample import Box
from training.data.skips import BrokenEntry, SkipCounter

STANDARD_SENTENCE_KEYS = frozenset({"tokens", "raw", "sent", "sent_id", "reasoning"})


@dataclass(frozen=True)
class ReferAnnotation:
    regions: list[Region]
    box: Box


class ReferDataset(TargetDataset[ReferAnnotation]):
    """One split (``train``, ``val``, ``testA``, ``testB``, ``test``; matched exactly) of a refer-layout folder.

    Images are ``image_dir / file_name`` with ``file_name`` from instances.json, falling back to
    ``COCO_train2014_{image_id:012d}.jpg``.
    """

    def __init__(
        self,
        folder: Path,
        split: str,
        *,
        image_dir: Path,
        split_by: str = "unc",
        source: str = "refer",
        per: Per = "sentence",
        skips: SkipCounter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        folder, image_dir = Path(folder), Path(image_dir)
        skips = skips or SkipCounter(f"{source}/{split}")
        refs = load_plain_pickle(folder / f"refs({split_by}).p")
        if not isinstance(refs, list):
            raise ValueError(f"{folder / f'refs({split_by}).p'} holds a {type(refs).__name__}, expected a list of refs")
        instances = json.loads((folder / "instances.json").read_text(encoding="utf-8"))
        images = _by_id(instances.get("images", []))
        annotations = _by_id(instances.get("annotations", []))
        available = sorted({str(ref.get("split")) for ref in refs if isinstance(ref, dict)})
        if split not in available:
            raise ValueError(f"split {split!r} not in {folder} (available: {', '.join(available)})")
        existing: dict[Path, bool] = {}
        targets = []
        for ref in refs:
            if not isinstance(ref, dict) or ref.get("split") != split:
                continue
            try:
                targets.append(_target(ref, images, annotations, image_dir, existing))
            except BrokenEntry as error:
                skips.skip_error(error, f"ref {ref.get('ref_id')}")
        super().__init__(targets, source=source, per=per, skips=skips, rng=rng)

    def decode(self, target: Target[ReferAnnotation]) -> Decoded:
        image = read_rgb(target.image_path)
        height, width = image.shape[:2]
        mask = checked_mask(union_mask(target.annotation.regions, height, width), height, width)
        return Decoded(image=image, mask=mask, box=target.annotation.box)


def _by_id(items: list[Any]) -> dict[Any, dict[str, Any]]:
    return {item["id"]: item for item in items if isinstance(item, dict) and "id" in item}


def _target(
    ref: dict[str, Any],
    images: dict[Any, dict[str, Any]],
    annotations: dict[Any, dict[str, Any]],
    image_dir: Path,
    existing: dict[Path, bool],
) -> Target[ReferAnnotation]:
    try:
        ref_id, ann_id, image_id, sentences = ref["ref_id"], ref["ann_id"], ref["image_id"], list(ref["sentences"])
    except (KeyError, TypeError) as error:
        raise BrokenEntry("malformed ref", str(error)) from error
    ann = annotations.get(ann_id)
    if ann is None:
        raise BrokenEntry("missing annotation", f"ann_id {ann_id}")
    queries = tuple(q for q in (_query(s, f"{ref_id}:{i}") for i, s in enumerate(sentences)) if q is not None)
    if not queries:
        raise BrokenEntry("no sentences")
    path = image_dir / _image_file_name(images.get(image_id, {}), image_id)
    if path not in existing:
        existing[path] = path.is_file()
    if not existing[path]:
        raise BrokenEntry("missing image", str(path))
    annotation = ReferAnnotation(parse_coco_segmentation(ann.get("segmentation")), xywh_to_xyxy(ann.get("bbox")))
    meta = {"split": ref["split"], "ann_id": ann_id, "category_id": ann.get("category_id")}
    return Target(path, str(image_id), str(ref_id), queries, annotation, meta)


def _image_file_name(image_info: dict[str, Any], image_id: Any) -> str:
    if image_info.get("file_name"):
        return str(image_info["file_name"])
    try:
        return f"COCO_train2014_{int(image_id):012d}.jpg"
    except (TypeError, ValueError) as error:
        raise BrokenEntry("malformed ref", f"image_id {image_id!r}") from error


def _query(sentence: Any, fallback_id: str) -> Query | None:
    if not isinstance(sentence, dict):
        return None
    text = sentence.get("sent") or sentence.get("raw")
    if not isinstance(text, str) or not text.strip():
        return None
    reasoning = sentence.get("reasoning")
    return Query(
        text=text.strip(),
        sample_id=str(sentence.get("sent_id", fallback_id)),
        reasoning=reasoning if isinstance(reasoning, str) else None,
        meta={key: value for key, value in sentence.items() if key not in STANDARD_SENTENCE_KEYS},
    )
