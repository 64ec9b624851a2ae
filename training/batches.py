"""Samples to model inputs: the resumable stream of micro-batches and the encoding of a batch.

Frozen encoders (the reasoner's vision tower, SAM 2's image encoder) give the same output for an
image every time, so the encoder caches it per image id.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from lens_model import sam_head
from lens_model.answer_format import format_answer, to_reasoner_frame
from lens_model.modeling import LensModel, ReasonerInputs
from lens_model.result import Box
from training.common.sampler import ResumableSampler
from training.data.registry import load_dataset
from training.data.sample import Sample
from training.stage_config import DataSection


def training_dataset(data: DataSection):
    """One sample per target with a random expression, drawn from the global ``random`` module, whose
    state every checkpoint saves, so a resumed run draws the same expressions. ``data.mix`` adds
    further datasets (the three RefCOCO datasets share COCO image ids, so per-image caches stay valid)."""
    parts = [load_dataset(name, data.root, data.split, per="ref") for name in (data.dataset, *data.mix)]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def batches(dataset, sampler: ResumableSampler, batch_size: int, num_workers: int) -> Iterator[list[Sample]]:
    """Endless batches of samples in the sampler's resumable order (broken entries are skipped)."""
    # A private generator: starting a loader iterator must not consume the global torch RNG (exact resume).
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=as_list,
                        generator=torch.Generator())
    while True:
        for items in loader:
            sampler.advance(len(items))
            kept = [s for s in items if s is not None]
            if kept:
                yield kept
        sampler.set_epoch(sampler.epoch + 1)


def as_list(items: list) -> list:
    """Collate function that keeps samples as a list (a named function, so spawned workers can pickle it)."""
    return items


class FeatureCache:
    """A small LRU of per-image tensors computed by frozen modules (keyed by dataset image id)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, object] = OrderedDict()

    def get(self, key: str, compute: Callable[[], object]):
        if self.size > 0 and key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = compute()
        if self.size > 0:
            self._items[key] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


@dataclass
class ReasonerBatch:
    """One image per row: the reasoner's inputs, SAM 2's features, and ground truth in both frames."""

    samples: list[Sample]
    inputs: ReasonerInputs
    resized_sizes: list[tuple[int, int]]
    sam_features: sam_head.SamImageFeatures | None  # None when the stage asked for none (SFT)

    def gt_boxes_in_reasoner_frame(self) -> list[tuple[float, float, float, float]]:
        """Each sample's ``box`` (its first instance's) in the reasoner's frame."""
        return [to_reasoner_frame(s.box, (s.width, s.height), size) for s, size in zip(self.samples, self.resized_sizes)]

    def instance_boxes_in_reasoner_frame(self) -> list[list[Box]]:
        """Every instance's box of each sample, in the reasoner's frame ([] for a no-target sample)."""
        return [[to_reasoner_frame(box, (s.width, s.height), size) for box in s.boxes]
                for s, size in zip(self.samples, self.resized_sizes)]

    def teacher_answers(self, template: str) -> list[str]:
        """Ground-truth completions in the exact format the model generates at inference: one object
        per instance, labelled with the expression, ``[]`` for a no-target sample."""
        return [format_answer([(box, s.text) for box in boxes], template, s.reasoning or "")
                for s, boxes in zip(self.samples, self.instance_boxes_in_reasoner_frame())]


class BatchEncoder:
    """Turns samples into reasoner inputs and SAM 2 features, caching what frozen modules compute."""

    def __init__(self, model: LensModel, cache_size: int, vision_frozen: bool, sam_encoder_frozen: bool) -> None:
        self.model = model
        self.vision_cache = FeatureCache(cache_size if vision_frozen else 0)
        self.sam_cache = FeatureCache(cache_size if sam_encoder_frozen else 0)

    def encode(self, samples: list[Sample], template: str, with_sam_features: bool = True) -> ReasonerBatch:
        model = self.model
        encoded = [model.encode_image(s.image) for s in samples]
        vision = [self.vision_cache.get(s.image_id, lambda e=e: self._vision(e)) for s, e in zip(samples, encoded)]
        inputs = model.encode_inputs([s.text for s in samples], encoded, vision, template)
        features = None
        if with_sam_features:
            sam_levels = [self.sam_cache.get(s.image_id, lambda s=s: self._sam(s.image)) for s in samples]
            features = sam_head.SamImageFeatures([torch.cat(level) for level in zip(*(f.fpn for f in sam_levels))])
        return ReasonerBatch(samples, inputs, [e.resized_size for e in encoded], features)

    def _vision(self, encoded) -> torch.Tensor:
        with torch.no_grad() if self.vision_cache.size else contextlib.nullcontext():
            return self.model.vision_embeds(encoded)

    def _sam(self, image: np.ndarray) -> sam_head.SamImageFeatures:
        with torch.no_grad() if self.sam_cache.size else contextlib.nullcontext():
            return self.model.sam_features([image])
