"""Generate a synthetic referring-segmentation dataset in the RefCOCO (refer) layout, or tracking videos.

    python -m training.synthetic --out DIR [--images N] [--seed S] [--size PX] [--objects MIN MAX]
                                 [--expression-types ...]
    python -m training.synthetic --out DIR --videos N [--frames T] [--seed S] [--size PX] [--objects MIN MAX]

writes ``DIR/synthetic/``: ``images/*.png``, ``instances.json`` (COCO images, annotations with
exact polygon segmentations, ``bbox`` and an ``attributes`` dict, categories) and ``refs(unc).p``
(a plain pickle of refs whose sentences also carry ``reasoning`` and ``expression_type``).
Images are split 80/10/10 into train/val/test. The same arguments always give the same bytes.

Besides the single-object expressions (one ref per object, ``EXPRESSION_TYPES``), an image gets a
"multiple" expression ("all the circles": a ref whose ``ann_id`` lists every referent) with
probability ``GROUP_SHARES["multiple"]`` when two objects share a phrase, and an "absent" one ("the
purple star": ``ann_id`` ``[]``) with probability ``GROUP_SHARES["absent"]``. They come from a
random stream of their own and their refs have ids of their own ("g0", "g1", ...), so the images,
annotations and single-object refs are those the same seed gives without them.
Load it with ``training.data.load_dataset("synthetic", DIR, split)``.

With ``--videos N`` it writes ``DIR/synthetic_videos/`` instead: N videos of T frames in which the
shapes move, cross and occlude one another, each with a query about its first frame and the visible
mask of every object on every frame (``training.data.synthetic_motion``; layout in
``training.data.videos``), for ``python -m training.evaluate --task tracking``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lens_model.result import mask_to_box
from training.data.synthetic_expressions import (
    EXPRESSION_TYPES,
    GROUP_TYPES,
    Expression,
    choose_expressions,
    choose_group_expressions,
    explain,
    explain_group,
    group_targets,
)
from training.data.synthetic_motion import MIN_FRAMES, sample_video
from training.data.synthetic_scenes import DEFAULT_OBJECTS, SHAPES, Scene, SceneObject, sample_scene
from training.data.videos import FOLDER as VIDEO_FOLDER
from training.data.videos import write_index, write_video

SPLIT_FRACTIONS = {"val": 0.1, "test": 0.1}  # the rest is train
MAX_SENTENCES_PER_REF = 3
POSITION_MARGIN = 0.08  # fraction of the image side by which a target must clearly win a comparison
MIN_SIZE = 64
PICKLE_PROTOCOL = 4
PNG_COMPRESSION = 1  # zlib level: fast, and the noisy backgrounds barely compress anyway
ALL_TYPES = EXPRESSION_TYPES + GROUP_TYPES
# Chance that an image gets one expression of the kind (when its scene allows one). With 1-6 shapes
# per scene, each kind is about 6 % of the expressions (the rest name one object each).
GROUP_SHARES = {"multiple": 0.5, "absent": 0.5}
GROUP_STREAM = 1  # the group expressions' random stream: default_rng([seed, GROUP_STREAM])


@dataclass(frozen=True)
class GeneratedDataset:
    folder: Path
    images: Counter[str]
    refs: Counter[str]
    sentences: Counter[str]


def _assign_splits(rng: np.random.Generator, count: int) -> list[str]:
    splits = ["train"] * count
    order = iter(rng.permutation(count))
    for split, fraction in SPLIT_FRACTIONS.items():
        share = max(1, round(fraction * count)) if count >= 3 else 0
        for _ in range(share):
            splits[int(next(order))] = split
    return splits


def _annotation(ann_id: int, image_id: int, obj: SceneObject) -> dict[str, Any]:
    x1, y1, x2, y2 = mask_to_box(obj.mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": SHAPES.index(obj.shape) + 1,
        "segmentation": [list(obj.polygon)],
        "area": int(obj.mask.sum()),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "iscrowd": 0,
        "attributes": {
            "color": obj.color,
            "shape": obj.shape,
            "size": obj.size,
            "center": [round(obj.center[0], 1), round(obj.center[1], 1)],
        },
    }


def _sentences(expressions: Sequence[Expression], target: int, scene: Scene, first_id: int) -> list[dict[str, Any]]:
    return [
        {
            "tokens": expression.text.split(),
            "raw": expression.text,
            "sent_id": first_id + offset,
            "sent": expression.text,
            "reasoning": explain(expression, target, scene.objects, scene.image.shape[1]),
            "expression_type": expression.kind,
        }
        for offset, expression in enumerate(expressions)
    ]


def _group_sentence(expression: Expression, scene: Scene, sent_id: str) -> dict[str, Any]:
    return {
        "tokens": expression.text.split(),
        "raw": expression.text,
        "sent_id": sent_id,
        "sent": expression.text,
        "reasoning": explain_group(expression, scene.objects, scene.image.shape[1]),
        "expression_type": expression.kind,
    }


def generate_dataset(
    out_dir: Path,
    *,
    num_images: int = 200,
    seed: int = 0,
    size: int = 224,
    expression_types: Sequence[str] = ALL_TYPES,
    objects: tuple[int, int] = DEFAULT_OBJECTS,
) -> GeneratedDataset:
    unknown = set(expression_types) - set(ALL_TYPES)
    if unknown or not expression_types:
        raise ValueError(
            f"expression types must be a non-empty subset of {ALL_TYPES}, got {list(expression_types)}"
        )
    single_types = [kind for kind in EXPRESSION_TYPES if kind in expression_types]
    group_rng = np.random.default_rng([seed, GROUP_STREAM])
    if num_images < 1 or size < MIN_SIZE:
        raise ValueError(f"need at least one image of at least {MIN_SIZE} px, got {num_images} of {size} px")
    rng = np.random.default_rng(seed)
    folder = Path(out_dir) / "synthetic"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    splits = _assign_splits(rng, num_images)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    result = GeneratedDataset(folder, Counter(splits), Counter(), Counter())
    single_refs = single_sentences = group_refs = 0
    for image_id, split in enumerate(splits, start=1):
        scene = sample_scene(rng, size, objects)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(scene.image).save(folder / "images" / file_name, compress_level=PNG_COMPRESSION)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        first_annotation = len(annotations) + 1
        for index, obj in enumerate(scene.objects):
            annotation = _annotation(len(annotations) + 1, image_id, obj)
            annotations.append(annotation)
            margin = POSITION_MARGIN * size
            expressions = choose_expressions(rng, index, scene.objects, single_types, MAX_SENTENCES_PER_REF, margin)
            if not expressions:
                continue
            sentences = _sentences(expressions, index, scene, first_id=single_sentences)
            single_refs, single_sentences = single_refs + 1, single_sentences + len(sentences)
            refs.append(
                {
                    "ref_id": single_refs - 1,
                    "ann_id": annotation["id"],
                    "image_id": image_id,
                    "split": split,
                    "category_id": annotation["category_id"],
                    "file_name": file_name,
                    "sent_ids": [sentence["sent_id"] for sentence in sentences],
                    "sentences": sentences,
                }
            )
            result.refs[split] += 1
            result.sentences[split] += len(sentences)
        for expression in choose_group_expressions(group_rng, scene.objects, expression_types, GROUP_SHARES):
            ann_ids = [first_annotation + i for i in group_targets(expression, scene.objects, size)]
            ref_id = f"g{group_refs}"
            group_refs += 1
            refs.append({"ref_id": ref_id, "ann_id": ann_ids, "image_id": image_id, "split": split,
                         "category_id": annotations[ann_ids[0] - 1]["category_id"] if ann_ids else None,
                         "file_name": file_name, "sent_ids": [ref_id],
                         "sentences": [_group_sentence(expression, scene, ref_id)]})
            result.refs[split] += 1
            result.sentences[split] += 1
    _write_annotations(folder, images, annotations, refs)
    return result


def generate_videos(out_dir: Path, *, num_videos: int = 10, num_frames: int = 100, seed: int = 0, size: int = 224,
                    objects: tuple[int, int] = DEFAULT_OBJECTS) -> Path:
    """Write ``num_videos`` tracking videos to ``out_dir/synthetic_videos``; returns that folder."""
    if num_videos < 1 or size < MIN_SIZE or num_frames < MIN_FRAMES:
        raise ValueError(f"need at least one video of at least {MIN_FRAMES} frames of at least {MIN_SIZE} px")
    rng = np.random.default_rng(seed)
    folder = Path(out_dir) / VIDEO_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    entries = [write_video(folder, number, sample_video(rng, size, num_frames, POSITION_MARGIN * size, objects))
               for number in range(1, num_videos + 1)]
    write_index(folder, size, num_frames, entries)
    return folder


def _write_annotations(
    folder: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]], refs: list[dict[str, Any]]
) -> None:
    categories = [{"id": i + 1, "name": shape, "supercategory": "shape"} for i, shape in enumerate(SHAPES)]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
    with open(folder / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=PICKLE_PROTOCOL)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output root; the dataset goes to OUT/synthetic/")
    parser.add_argument("--images", type=int, default=200, help="number of images (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size", type=int, default=224, help=f"image side in pixels, at least {MIN_SIZE} (default 224)"
    )
    parser.add_argument(
        "--expression-types",
        nargs="+",
        choices=ALL_TYPES,
        default=list(ALL_TYPES),
        metavar="TYPE",
        help=f"expression kinds to generate, any of {', '.join(ALL_TYPES)} (default all; "
        f"{', '.join(EXPRESSION_TYPES)} alone give the single-object dataset of earlier versions)",
    )
    parser.add_argument(
        "--objects",
        type=int,
        nargs=2,
        default=list(DEFAULT_OBJECTS),
        metavar=("MIN", "MAX"),
        help="shapes per scene, inclusive range (default %(default)s; 1 1 gives one-object curriculum scenes)",
    )
    parser.add_argument("--videos", type=int, default=None, metavar="N",
                        help="write N tracking videos (DIR/synthetic_videos) instead of images")
    parser.add_argument("--frames", type=int, default=100, help="frames per video (default 100)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.size < MIN_SIZE:
        parser.error(f"--images must be >= 1 and --size >= {MIN_SIZE}")
    if not 1 <= args.objects[0] <= args.objects[1]:
        parser.error("--objects needs 1 <= MIN <= MAX")
    start = time.perf_counter()
    if args.videos is not None:
        if args.videos < 1 or args.frames < MIN_FRAMES:
            parser.error(f"--videos must be >= 1 and --frames >= {MIN_FRAMES}")
        folder = generate_videos(args.out, num_videos=args.videos, num_frames=args.frames, seed=args.seed,
                                 size=args.size, objects=tuple(args.objects))
        print(f"wrote {args.videos} videos of {args.frames} frames to {folder} in {time.perf_counter() - start:.1f} s")
        return
    result = generate_dataset(
        args.out,
        num_images=args.images,
        seed=args.seed,
        size=args.size,
        expression_types=args.expression_types,
        objects=tuple(args.objects),
    )
    print(f"wrote {result.folder} in {time.perf_counter() - start:.1f} s")
    for split in ("train", "val", "test"):
        counts = f"{result.images[split]:5d} images {result.refs[split]:6d} refs {result.sentences[split]:6d} sentences"
        print(f"  {split:5s}: {counts}")


if __name__ == "__main__":
    main()
