"""Evaluation protocols: this project's corrected metrics, or the authors' evaluation behind the paper's tables.

``corrected`` (the default): every referring expression is one sample, scored once; the ground truth
is binarised and ignore regions are left out (``training.metrics``); queries are the dataset's text;
the model runs with its own settings.

``paper``: what the authors' scripts (hustvl/LENS ``eval/evaluate_res2.py``, ``evaluate_reasonseg.py``,
``evaluate_res2_gs.py``) did:

* RefCOCO/+/g and GroundingSuite: an object's polygons (or RLEs) are summed, not OR-ed. Where two
  overlap the value is 2, which the histogram metric drops from the target and the intersection,
  while a prediction there still counts in the union (``training.iou.histogram_intersection_union``).
* ReasonSeg: "ignore" shapes are background, and only each image's first query is scored.
* GroundingSuite: every "is" and "are" substring is deleted from the caption, which is then lower-cased.
* Each process takes every world-size-th item (a RefCOCO ref with all its sentences, a ReasonSeg
  image, a GroundingSuite line) as torch's ``DistributedSampler(drop_last=False)`` deals them: the
  last round is filled up with the first items again, and those duplicates are scored too.
* The model gets the scripts' inputs: ReasonSeg images resized to 640 px on the longest side and
  the SAM 2 input resized by OpenCV, the other datasets smart-resized and PIL-resized; answers
  capped at 768 tokens of prompt + answer; query text verbatim; pad tokens left out of the query pass.

Not repeated: the 1e-5 and 1e-8 the scripts add to unions (a relative change below 1e-5 per
expression), and their box IoU; box metrics stay this project's in both protocols.
"""
from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lens_model.config import LensConfig
from lens_model.released_profiles import AUTHORS_LENGTH_CAP, REASONSEG, REFCOCO
from training.data.dataset import TargetDataset
from training.data.groundingsuite import GroundingSuiteDataset
from training.data.masks import Polygons, Region
from training.data.reasonseg import ReasonSegDataset
from training.data.refer import ReferDataset
from training.data.sample import Sample
from training.iou import histogram_intersection_union
from training.metrics import SegmentationMeter

Protocol = Literal["corrected", "paper"]
PROTOCOLS = ("corrected", "paper")
PAPER_DATASETS = (ReferDataset, ReasonSegDataset, GroundingSuiteDataset)


@dataclass(frozen=True)
class Planned:
    """One expression to score: its dataset index, the target it belongs to, and for a sampler's
    padding duplicate the padded position (0 for the original)."""

    index: int
    target: int
    padding: int = 0


def check_supported(protocol: Protocol, dataset: TargetDataset) -> None:
    if protocol == "paper" and not isinstance(dataset, PAPER_DATASETS):
        raise ValueError("--protocol paper reproduces the authors' RefCOCO, ReasonSeg and GroundingSuite "
                         f"evaluations; {type(dataset).__name__} has none")


def plan(dataset: TargetDataset, protocol: Protocol, limit: int | None, rank: int, world_size: int) -> list[Planned]:
    """This rank's expressions. ``limit`` counts expressions (corrected) or the authors' items (paper)."""
    starts = [0, *itertools.accumulate(len(t.queries) for t in dataset.targets)][:-1]
    if protocol == "corrected":
        count = len(dataset) if limit is None else min(limit, len(dataset))
        return [Planned(i, bisect.bisect_right(starts, i) - 1) for i in range(count) if i % world_size == rank]
    first_only = isinstance(dataset, ReasonSegDataset)
    items = [(t, [start] if first_only else list(range(start, start + len(target.queries))))
             for t, (start, target) in enumerate(zip(starts, dataset.targets))][:limit]
    if not items:
        return []
    padded = math.ceil(len(items) / world_size) * world_size
    return [Planned(index, items[position % len(items)][0], position if position >= len(items) else 0)
            for position in range(rank, padded, world_size) for index in items[position % len(items)][1]]


def prepare(sample: Sample, planned: Planned, protocol: Protocol, dataset: TargetDataset) -> Sample:
    """The sample as the protocol scores it: a padding duplicate gets its own id, a GroundingSuite
    caption the authors' edit."""
    changes = {}
    if planned.padding:
        changes["sample_id"] = f"{sample.sample_id}~pad{planned.padding}"
    if protocol == "paper" and isinstance(dataset, GroundingSuiteDataset):
        changes["text"] = sample.text.replace("is", "").replace("are", "").lower()
    return dataclasses.replace(sample, **changes) if changes else sample


def score_mask(meter: SegmentationMeter, protocol: Protocol, dataset: TargetDataset, planned: Planned,
               sample: Sample, prediction: np.ndarray) -> None:
    if protocol == "corrected":
        meter.add_mask(sample.sample_id, prediction, sample.mask, sample.ignore)
    else:
        meter.add_counts(sample.sample_id, *histogram_intersection_union(prediction, paper_ground_truth(dataset, planned.target, sample)))


def paper_ground_truth(dataset: TargetDataset, target: int, sample: Sample) -> np.ndarray:
    """Per-pixel ground-truth values as the authors built them (uint8, summed regions, no ignore)."""
    if isinstance(dataset, ReasonSegDataset):
        return sample.mask.astype(np.uint8)  # "ignore" shapes are background
    annotation = dataset.targets[target].annotation
    regions = [r for a in annotation for r in a.regions] if isinstance(dataset, ReferDataset) else annotation.rles
    height, width = sample.mask.shape
    masks = [mask for region in regions for mask in _single_masks(region, height, width)]
    if not masks:  # a no-target ref
        return np.zeros((height, width), dtype=np.uint8)
    return np.sum(masks, axis=0).astype(np.uint8)  # uint8 like theirs (np.sum(...).astype(np.uint8))


def _single_masks(region: Region, height: int, width: int) -> list[np.ndarray]:
    """One mask per polygon of a polygon region (pycocotools' frPyObjects gives one RLE each)."""
    if isinstance(region, Polygons):
        return [Polygons((polygon,)).to_mask(height, width) for polygon in region.coordinates]
    return [region.to_mask(height, width)]


def paper_model_config(config: LensConfig, dataset: TargetDataset) -> LensConfig:
    """``config`` with the inputs and length cap of the authors' evaluation script for ``dataset``."""
    profile = REASONSEG if isinstance(dataset, ReasonSegDataset) else REFCOCO
    generation = dataclasses.replace(config.generation, max_length=AUTHORS_LENGTH_CAP, max_new_tokens=AUTHORS_LENGTH_CAP)
    return dataclasses.replace(config, preprocessing=profile.preprocessing(), generation=generation)
