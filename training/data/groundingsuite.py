"""GroundingSuite-Eval: a JSONL file, one object per line.

Fields used: ``image_path`` (relative to an image root), ``box`` [x1, y1, x2, y2] in pixels,
``segmentation`` (a COCO RLE dict with string counts, or a list of them: their union) and
``caption``, which is used verbatim apart from stripping outer whitespace. (The LENS evaluation
deleted every "is"/"are" substring from captions; that is deliberately not repeated.) ``idx`` is the
sample id when present.

The released file writes ``image_path`` as ``unlabeled2017/<name>.jpg``; when joining it to the
image root does not find a file, the file name alone is tried in the root. Either must be a regular
file inside the image root (see ``paths``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from lens_model.result import Box
from training.data.dataset import Decoded, Per, Query, Target, TargetDataset
from training.data.fields import entry_id
from training.data.images import read_rgb
from training.data.lines import read_json_objects
from training.data.masks import Rle, checked_mask, clip_box, parse_box, parse_rle, union_mask
from training.data.paths import first_contained_file
from training.data.skips import BrokenEntry, SkipCounter


@dataclass(frozen=True)
class GroundingAnnotation:
    rles: tuple[Rle, ...]
    box: Box


class GroundingSuiteDataset(TargetDataset[GroundingAnnotation]):
    def __init__(
        self,
        jsonl_path: Path,
        image_root: Path,
        *,
        source: str = "groundingsuite",
        per: Per = "sentence",
        skips: SkipCounter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        jsonl_path, image_root = Path(jsonl_path), Path(image_root).resolve()
        skips = skips or SkipCounter(source)
        targets = []
        for line, record in read_json_objects(jsonl_path, skips):
            try:
                targets.append(_target(record, line, image_root))
            except BrokenEntry as error:
                skips.skip_error(error, f"{jsonl_path.name}:{line}")
        super().__init__(targets, source=source, per=per, skips=skips, rng=rng)

    def decode(self, target: Target[GroundingAnnotation]) -> Decoded:
        image = read_rgb(target.image_path)
        height, width = image.shape[:2]
        mask = checked_mask(union_mask(target.annotation.rles, height, width), height, width)
        return Decoded(image=image, mask=mask, box=clip_box(target.annotation.box, height, width))


def resolve_image(image_root: Path, relative: str) -> Path:
    """``relative`` under ``image_root`` (resolved), or else its file name alone there."""
    return first_contained_file(image_root, (relative, Path(relative).name), "missing image")


def _target(record: dict, line: int, image_root: Path) -> Target[GroundingAnnotation]:
    image_path, caption, segmentation = record.get("image_path"), record.get("caption"), record.get("segmentation")
    if not isinstance(image_path, str) or not isinstance(caption, str) or not caption.strip():
        raise BrokenEntry("missing field", "needs string 'image_path' and non-empty 'caption'")
    items = segmentation if isinstance(segmentation, list) else [segmentation]
    if not items or not all(isinstance(item, dict) for item in items):
        raise BrokenEntry("bad rle", "'segmentation' must be an RLE dict or a list of them")
    annotation = GroundingAnnotation(tuple(parse_rle(item) for item in items), parse_box(record.get("box")))
    path = resolve_image(image_root, image_path)
    sample_id = entry_id(record.get("idx", line), "idx")
    return Target(path, path.stem, sample_id, (Query(caption.strip(), sample_id),), annotation)
