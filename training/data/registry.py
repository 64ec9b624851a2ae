"""Loading any supported dataset by name from a data root laid out as in docs/datasets.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.data.dataset import TargetDataset
from training.data.grefer import GReferDataset
from training.data.groundingsuite import GroundingSuiteDataset
from training.data.jsonl import JsonlDataset
from training.data.reasonseg import ReasonSegDataset
from training.data.refer import ReferDataset

REFER_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
DATASET_NAMES = (*REFER_SPLIT_BY, "grefcoco", "reasonseg", "groundingsuite", "jsonl", "synthetic")
GROUNDINGSUITE_JSONL = Path("groundingsuite") / "GroundingSuite-Eval.jsonl"
GROUNDINGSUITE_IMAGES = Path("coco") / "unlabeled2017"
COCO_TRAIN2014 = Path("images") / "mscoco" / "images" / "train2014"


def load_dataset(name: str, root: str | Path, split: str | None = None, **kwargs: Any) -> TargetDataset:
    """A dataset of ``Sample``s. ``kwargs`` go to the loader (``per``, ``skips``, ``rng``, and
    per-format paths such as ``image_dir``, ``split_by``, ``jsonl_path``, ``image_root``).

    - ``refcoco``, ``refcoco+``, ``refcocog``: ``root/<name>/refs(unc|umd).p`` + ``instances.json``,
      images in ``root/images/mscoco/images/train2014``; split ``train``, ``val``, ``testA``,
      ``testB`` or ``test``.
    - ``grefcoco``: ``root/grefcoco/grefs(unc).json`` + ``instances.json``, images as for RefCOCO; split
      ``train``, ``val``, ``testA`` or ``testB``. Expressions may name several objects or none.
    - ``synthetic``: the generator's output, ``root/synthetic/`` (split ``train``, ``val``, ``test``).
    - ``reasonseg``: ``root/reason_seg/ReasonSeg/<split>/``.
    - ``groundingsuite``: ``root/groundingsuite/GroundingSuite-Eval.jsonl`` with images in
      ``root/coco/unlabeled2017``; split ``eval`` (or None).
    - ``jsonl``: ``root/<split>.jsonl``, or ``root`` itself when it is a ``.jsonl`` file.
    """
    root = Path(root)
    if name in REFER_SPLIT_BY:
        kwargs.setdefault("image_dir", root / COCO_TRAIN2014)
        kwargs.setdefault("split_by", REFER_SPLIT_BY[name])
        return ReferDataset(root / name, _required(name, split), source=name, **kwargs)
    if name == "grefcoco":
        kwargs.setdefault("image_dir", root / COCO_TRAIN2014)
        return GReferDataset(root / name, _required(name, split), **kwargs)
    if name == "synthetic":
        kwargs.setdefault("image_dir", root / "synthetic" / "images")
        return ReferDataset(root / "synthetic", _required(name, split), source=name, **kwargs)
    if name == "reasonseg":
        return ReasonSegDataset(root / "reason_seg" / "ReasonSeg" / _required(name, split), **kwargs)
    if name == "groundingsuite":
        if split not in (None, "eval"):
            raise ValueError(f"GroundingSuite-Eval has a single split 'eval', got {split!r}")
        jsonl_path = kwargs.pop("jsonl_path", root / GROUNDINGSUITE_JSONL)
        image_root = kwargs.pop("image_root", root / GROUNDINGSUITE_IMAGES)
        return GroundingSuiteDataset(jsonl_path, image_root, **kwargs)
    if name == "jsonl":
        path = root if root.suffix == ".jsonl" else root / f"{_required(name, split)}.jsonl"
        return JsonlDataset(path, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")


def _required(name: str, split: str | None) -> str:
    if split is None:
        raise ValueError(f"dataset {name!r} needs a split")
    return split
