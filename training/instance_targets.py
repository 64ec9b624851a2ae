"""Which ground-truth mask the LENS mask (SAM 2 prompted by the query tokens) learns.

The LENS mask is the mask of the answer's first object; SAM 2's own box prompts segment the others
(``docs/model.md``, instance masks). So it learns the first instance's mask, or, for an answer the
model wrote itself (GRPO), the instance whose box its first box overlaps most. A single-object
sample's target is its ``mask``, whatever the answer, as before answers could name several objects.

A no-target sample has none (None: the LENS mask learns nothing from it). Its right answer is
``[]``, whose LENS mask the predictor discards, and empty targets only teach the mask to vanish:
with them (12 % of the demo's refs) one alignment run of the demo converged to empty masks for
every query (train IoU 0.11, the share of no-target samples; recipes/demo/RESEARCH_LOG.md). The
answer ``[]`` is trained by SFT and rewarded by GRPO's box and mask rewards.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lens_model.result import Box
from training.data.sample import Sample
from training.iou import box_iou


def first_instance_mask(sample: Sample) -> np.ndarray | None:
    """The mask the LENS mask learns from a teacher answer (which lists the instances in order)."""
    if len(sample.instances) == 1:
        return sample.mask
    return sample.instances[0][1] if sample.instances else None


def answered_instance_mask(sample: Sample, first_box: Box | None, gt_boxes: Sequence[Box]) -> np.ndarray | None:
    """The mask the LENS mask learns from an answer whose first box is ``first_box`` (None: no box);
    ``gt_boxes`` are the sample's instance boxes in ``first_box``'s frame."""
    if len(sample.instances) < 2 or first_box is None:
        return first_instance_mask(sample)
    best = max(range(len(gt_boxes)), key=lambda i: box_iou(first_box, gt_boxes[i]))  # ties: the first
    return sample.instances[best][1]
