"""RefCOCO, RefCOCO+ and RefCOCOg (and the synthetic set) in the refer toolkit's layout.

A dataset folder holds ``refs(<split_by>).p`` (a pickled list of refs, each with a split, an
``ann_id`` and its sentences) and ``instances.json`` (COCO images, annotations, categories).
Each referring sentence is one sample; the target is the COCO annotation's polygons or RLE,
OR-ed and binarised, and its ``bbox`` converted to x1, y1, x2, y2. A ref's ``ann_id`` may also be a
list of ids (as in gRefCOCO): each is one instance of the sample, and the empty list is a no-target
ref; at most ``MAX_INSTANCES`` ids.

Either file that cannot be parsed at all (a corrupt pickle, invalid JSON, JSON nested too deeply,
``images`` or ``annotations`` that are not lists) is a ``ValueError`` with a one-line message; a
single ref, annotation or sentence that is malformed is skipped and counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lens_model.answer_parser import MAX_INSTANCES
from lens_model.result import Box
from training.data.dataset import Decoded, Per, Query, Target, TargetDataset
from training.data.fields import brief, entry_id
from training.data.images import read_rgb
from training.data.lines import read_json_object
from training.data.masks import Region, checked_mask, parse_coco_segmentation, union_mask, xywh_to_xyxy
from training.data.sample import NO_BOX
from training.data.paths import contained_file
from training.data.safe_pickle import load_plain_pickle
from training.data.skips import BrokenEntry, SkipCounter

STANDARD_SENTENCE_KEYS = frozenset({"tokens", "raw", "sent", "sent_id", "reasoning"})
Key = int | str  # COCO ids; refs naming any other kind of id are malformed


@dataclass(frozen=True)
class ReferAnnotation:
    regions: list[Region]
    box: Box


ReferTarget = tuple[ReferAnnotation, ...]  # a ref's annotations: one, several, or none


class ReferDataset(TargetDataset[ReferTarget]):
    """One split (``train``, ``val``, ``testA``, ``testB``, ``test``; matched exactly) of a refer-layout folder.

    Images are ``image_dir / file_name`` with ``file_name`` from instances.json, falling back to
    ``COCO_train2014_{image_id:012d}.jpg``; they must be regular files inside ``image_dir`` (see
    ``paths``).
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
        folder, image_dir = Path(folder), Path(image_dir).resolve()
        skips = skips or SkipCounter(f"{source}/{split}")
        refs_path, content = self.read_refs(folder, split_by)
        refs = refs_of_split(content, refs_path, split)
        instances = read_json_object(folder / "instances.json")
        images = by_id(instances, "images")
        annotations = by_id(instances, "annotations")
        image_files: dict[str, Path | BrokenEntry] = {}
        targets = []
        for ref in refs:
            try:
                targets.append(self.parse_ref(ref, images, annotations, image_dir, image_files))
            except BrokenEntry as error:
                skips.skip_error(error, f"ref {brief(ref.get('ref_id'))}")
        super().__init__(targets, source=source, per=per, skips=skips, rng=rng)

    @staticmethod
    def read_refs(folder: Path, split_by: str) -> tuple[Path, Any]:
        """The refs file and its plain data (``refs(unc).p`` through the plain-data unpickler)."""
        path = folder / f"refs({split_by}).p"
        return path, load_plain_pickle(path)

    @staticmethod
    def parse_ref(ref: dict[str, Any], images: dict[Key, dict[str, Any]], annotations: dict[Key, dict[str, Any]],
                  image_dir: Path, image_files: dict[str, Path | BrokenEntry]) -> Target[ReferTarget]:
        """One ref as a target (``BrokenEntry`` when it is broken)."""
        return _target(ref, images, annotations, image_dir, image_files)

    def decode(self, target: Target[ReferTarget]) -> Decoded:
        image = read_rgb(target.image_path)
        height, width = image.shape[:2]
        masks = [checked_mask(union_mask(a.regions, height, width), height, width) for a in target.annotation]
        if len(masks) == 1:  # a plain ref, exactly as before multi-object refs
            return Decoded(image=image, mask=masks[0], box=target.annotation[0].box)
        union = np.logical_or.reduce(masks) if masks else np.zeros((height, width), dtype=bool)
        box = target.annotation[0].box if masks else NO_BOX
        return Decoded(image=image, mask=union, box=box,
                       instances=tuple((a.box, m) for a, m in zip(target.annotation, masks)))


def refs_of_split(refs: Any, path: Path, split: str) -> list[dict[str, Any]]:
    """The refs of ``split`` in a refs file's content; ``ValueError`` if it is not a list or lacks the split."""
    if not isinstance(refs, list):
        raise ValueError(f"{path} holds a {type(refs).__name__}, expected a list of refs")
    available = sorted({ref["split"] for ref in refs if isinstance(ref, dict) and isinstance(ref.get("split"), str)})
    if split not in available:
        raise ValueError(f"split {split!r} not in {path.parent} (available: {', '.join(available)})")
    return [ref for ref in refs if isinstance(ref, dict) and ref.get("split") == split]


def by_id(instances: dict[str, Any], field: str) -> dict[Key, dict[str, Any]]:
    """The objects of ``instances[field]`` by their ``id``; objects without a usable id are left out."""
    items = instances.get(field, [])
    if not isinstance(items, list):
        raise ValueError(f"instances.json: '{field}' is a {type(items).__name__}, expected a list")
    return {item["id"]: item for item in items if isinstance(item, dict) and is_key(item.get("id"))}


def ref_fields(ref: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """A ref's ``ref_id``, ``ann_id``, ``image_id`` and ``sentences`` (``BrokenEntry`` when one is missing)."""
    try:
        return ref["ref_id"], ref["ann_id"], ref["image_id"], ref["sentences"]
    except KeyError as error:
        raise BrokenEntry("malformed ref", f"no {error}") from error


def refer_annotation(ann: dict[str, Any]) -> ReferAnnotation:
    """A COCO annotation's regions (polygons or RLE) and its ``bbox`` as (x1, y1, x2, y2)."""
    return ReferAnnotation(parse_coco_segmentation(ann.get("segmentation")), xywh_to_xyxy(ann.get("bbox")))


def is_key(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _target(
    ref: dict[str, Any],
    images: dict[Key, dict[str, Any]],
    annotations: dict[Key, dict[str, Any]],
    image_dir: Path,
    image_files: dict[str, Path | BrokenEntry],
) -> Target[ReferTarget]:
    ref_id, ann_id, image_id, sentences = ref_fields(ref)
    ann_ids = ann_id if isinstance(ann_id, list) else [ann_id]
    if not (all(is_key(a) for a in ann_ids) and is_key(image_id) and isinstance(sentences, (list, tuple))):
        raise BrokenEntry("malformed ref", "ann_id must be an id or a list of ids, image_id an id, sentences a list")
    if len(ann_ids) > MAX_INSTANCES:
        raise BrokenEntry("malformed ref", f"{len(ann_ids)} ann_ids, at most {MAX_INSTANCES}")
    ref_text, image_text = entry_id(ref_id, "ref_id"), entry_id(image_id, "image_id")
    missing = [a for a in ann_ids if a not in annotations]
    if missing:
        raise BrokenEntry("missing annotation", f"ann_id {brief(missing[0])}")
    queries = ref_queries(sentences, ref_text)
    path = image_file(image_dir, image_file_name(images.get(image_id, {}), image_id), image_files)
    anns = [annotations[a] for a in ann_ids]
    annotation = tuple(refer_annotation(a) for a in anns)
    meta = {"split": ref["split"], "ann_id": ann_id, "category_id": anns[0].get("category_id") if anns else None}
    return Target(path, image_text, ref_text, queries, annotation, meta, referents=len(anns))


def image_file(image_dir: Path, name: str, image_files: dict[str, Path | BrokenEntry]) -> Path:
    """``contained_file`` for an image, remembered: many refs share one image."""
    if name not in image_files:
        try:
            image_files[name] = contained_file(image_dir, name, "missing image")
        except BrokenEntry as error:
            image_files[name] = error
    found = image_files[name]
    if isinstance(found, BrokenEntry):
        raise BrokenEntry(found.reason, found.detail)
    return found


def image_file_name(image_info: dict[str, Any], image_id: Key) -> str:
    file_name = image_info.get("file_name")
    if isinstance(file_name, str) and file_name:
        return file_name
    if file_name:
        raise BrokenEntry("malformed ref", f"file_name {brief(file_name)}")
    try:
        return f"COCO_train2014_{int(image_id):012d}.jpg"
    except ValueError as error:
        raise BrokenEntry("malformed ref", f"image_id {brief(image_id)}") from error


def ref_queries(sentences: list[Any] | tuple[Any, ...], ref_text: str) -> tuple[Query, ...]:
    """The usable sentences of a ref (``BrokenEntry`` when there is none)."""
    queries = tuple(q for q in (_query(s, f"{ref_text}:{i}") for i, s in enumerate(sentences)) if q is not None)
    if not queries:
        raise BrokenEntry("no sentences")
    return queries


def _query(sentence: Any, fallback_id: str) -> Query | None:
    if not isinstance(sentence, dict):
        return None
    text = sentence.get("sent") or sentence.get("raw")
    if not isinstance(text, str) or not text.strip():
        return None
    reasoning = sentence.get("reasoning")
    return Query(
        text=text.strip(),
        sample_id=entry_id(sentence.get("sent_id", fallback_id), "sent_id"),
        reasoning=reasoning if isinstance(reasoning, str) else None,
        meta={key: value for key, value in sentence.items() if key not in STANDARD_SENTENCE_KEYS},
    )
