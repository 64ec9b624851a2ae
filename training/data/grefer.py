"""gRefCOCO (generalized referring expressions, as in GRES/ReLA): an expression names one object, several
("all the red cups") or none ("the cup" where there is none), in the refer layout family.

A folder holds ``grefs(<split_by>).json`` (the released file; a pickled ``grefs(<split_by>).p`` is
read instead when there is no JSON, through the plain-data unpickler) and COCO's ``instances.json``.
Each ref has ``ann_id`` as a list of annotation ids: several for a multi-target expression, ``[-1]``
(or ``[]``) for a no-target one; a bare id counts as a list of one. A ref's ``no_target`` flag, where
present, must agree with its ids. Crowd annotations are left out, as ReLA's loader leaves them out.

One sample per sentence (or per ref): ``mask`` is the union of the instances' masks, ``instances`` the
(box, mask) of each in the ref's order, ``box`` the first one's (as for every dataset). A no-target sample has an
empty mask, no instances, the box (0, 0, 0, 0) and ``meta["no_target"]`` True.

Same rules as the refer loader: a file that cannot be parsed at all is a one-line ``ValueError``; a
malformed ref, annotation or sentence is skipped and counted. A ref naming more than ``MAX_TARGETS``
distinct objects is skipped (``too many targets``), which bounds a sample's memory to that many masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lens_model.answer_parser import MAX_INSTANCES
from training.data.dataset import Target
from training.data.fields import brief, entry_id
from training.data.lines import read_json
from training.data.refer import (
    Key, ReferDataset, ReferTarget, image_file, image_file_name, is_key, ref_fields, ref_queries, refer_annotation)
from training.data.safe_pickle import load_plain_pickle
from training.data.skips import BrokenEntry

MAX_TARGETS = MAX_INSTANCES  # the most boxes the model answers with: a ref naming more could never be matched
NO_TARGET_IDS = (-1,)  # gRefCOCO's ann_id of a no-target ref


class GReferDataset(ReferDataset):
    """One split (``train``, ``val``, ``testA``, ``testB``) of a gRefCOCO folder: the refer layout (images,
    skipping, decoding) with gRefCOCO's refs file and its refs of several targets or none."""

    def __init__(self, folder: Path, split: str, *, source: str = "grefcoco", **kwargs: Any) -> None:
        super().__init__(folder, split, source=source, **kwargs)

    @staticmethod
    def read_refs(folder: Path, split_by: str) -> tuple[Path, Any]:
        """``grefs(unc).json``, or where there is only ``grefs(unc).p``, that through the plain-data unpickler."""
        path = folder / f"grefs({split_by}).json"
        if path.exists() or not path.with_suffix(".p").exists():  # missing: the error names the JSON
            return path, read_json(path)
        return path.with_suffix(".p"), load_plain_pickle(path.with_suffix(".p"))

    @staticmethod
    def parse_ref(ref: dict[str, Any], images: dict[Key, dict[str, Any]], annotations: dict[Key, dict[str, Any]],
                  image_dir: Path, image_files: dict[str, Path | BrokenEntry]) -> Target[ReferTarget]:
        return _target(ref, images, annotations, image_dir, image_files)


def _target(
    ref: dict[str, Any],
    images: dict[Key, dict[str, Any]],
    annotations: dict[Key, dict[str, Any]],
    image_dir: Path,
    image_files: dict[str, Path | BrokenEntry],
) -> Target[ReferTarget]:
    ref_id, ann_ids, image_id, sentences = ref_fields(ref)
    ann_ids = _target_ids(ann_ids)
    flag = ref.get("no_target")
    if not is_key(image_id) or not isinstance(sentences, (list, tuple)) or flag not in (None, True, False):
        raise BrokenEntry("malformed ref", "image_id must be an id, sentences a list, no_target a boolean")
    if flag is not None and flag != (not ann_ids):
        raise BrokenEntry("malformed ref", f"no_target {flag} but ann_id {brief(ref['ann_id'])}")
    ref_text, image_text = entry_id(ref_id, "ref_id"), entry_id(image_id, "image_id")
    found = []
    for ann_id in ann_ids:
        ann = annotations.get(ann_id)
        if ann is None:
            raise BrokenEntry("missing annotation", f"ann_id {brief(ann_id)}")
        if ann.get("iscrowd") != 1:
            found.append(ann)
    if ann_ids and not found:
        raise BrokenEntry("only crowd annotations", f"ann_id {brief(ref['ann_id'])}")
    queries = ref_queries(sentences, ref_text)
    path = image_file(image_dir, image_file_name(images.get(image_id, {}), image_id), image_files)
    instances = tuple(refer_annotation(ann) for ann in found)
    meta = {"split": ref["split"], "ann_ids": [ann["id"] for ann in found], "no_target": not instances,
            "category_ids": [ann.get("category_id") for ann in found]}
    return Target(path, image_text, ref_text, queries, instances, meta, referents=len(instances))


def _target_ids(value: Any) -> list[Key]:
    """A ref's distinct annotation ids in order; [] for a no-target ref."""
    if is_key(value):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(is_key(item) for item in value):
        raise BrokenEntry("malformed ref", f"ann_id must be an id or a list of ids, got {brief(value)}")
    ids = list(dict.fromkeys(value))
    if tuple(ids) == NO_TARGET_IDS:
        return []
    if any(item in NO_TARGET_IDS for item in ids):
        raise BrokenEntry("malformed ref", f"ann_id {brief(value)} mixes -1 (no target) with targets")
    if len(ids) > MAX_TARGETS:
        raise BrokenEntry("too many targets", f"{len(ids)} > {MAX_TARGETS}")
    return ids


