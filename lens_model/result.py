"""The result of one text-prompted segmentation, independent of how it was produced."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Box = tuple[float, float, float, float]
Status = Literal["ok", "no_box", "no_target"]
NO_TARGET = "no target"  # the box_status of the no-target answer (lens_model.answer_parser)


def mask_to_box(mask: np.ndarray) -> Box:
    """(xmin, ymin, xmax + 1, ymax + 1) of a non-empty mask, in its pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("an empty mask has no box")
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def instance_map(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """uint8 H x W image of ``shape``: 0 is background, i + 1 the pixels of ``masks[i]``. Where masks
    overlap, the earlier one wins (answer order: the first instance is the one ``box`` and ``label``
    describe). At most 255 masks fit; an answer holds at most 32 (``answer_parser.MAX_INSTANCES``)."""
    if len(masks) > 255:
        raise ValueError(f"{len(masks)} instances do not fit in a uint8 instance image (at most 255)")
    image = np.zeros(shape, np.uint8)
    for index in reversed(range(len(masks))):  # the earlier instances are drawn last, over the later ones
        image[masks[index]] = index + 1
    return image


@dataclass
class Instance:
    """One referent of a query: its box (original pixels), its mask (bool H x W of the original
    image), SAM 2's predicted IoU for that mask in [0, 1], and the answer's label for it."""

    box: Box
    mask: np.ndarray
    score: float
    label: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4),
                "label": self.label, "mask_area": int(self.mask.sum())}


@dataclass
class SegmentationResult:
    """What LENS returns for one (image, query) pair.

    ``instances`` are the referents the answer named, in its order, each with a box and a mask;
    ``mask`` is the union of their masks, a boolean array of the original image's H x W. ``box``,
    ``label`` and ``score`` are the first instance's: ``box`` is (x1, y1, x2, y2) in original-image
    pixels, or ``None`` when the answer held no usable box; then ``box_status`` says why (for
    example ``"no box in answer"``, ``"degenerate box"`` or ``"no target"``). ``score`` is SAM 2's
    predicted IoU for the first mask, clamped to [0, 1]. ``status`` sums it up: ``ok``,
    ``no_target`` (the model says nothing matches; the mask is empty) or ``no_box`` (no usable answer).
    ``reasoning`` is the text inside the think tags (empty for the direct-answer prompt) and
    ``answer`` the whole generated text, unmodified.
    """

    query: str
    mask: np.ndarray
    box: Box | None
    box_status: str
    label: str | None
    score: float
    reasoning: str
    answer: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    random_weights: bool = False
    generated_tokens: int = 0
    instances: list[Instance] = field(default_factory=list)

    @property
    def status(self) -> Status:
        if self.instances:
            return "ok"
        return "no_target" if self.box_status == NO_TARGET else "no_box"

    def instance_map(self) -> np.ndarray:
        """The instances as one uint8 image of the mask's size (``instance_map``): 0 background, i + 1 instance i."""
        return instance_map([instance.mask for instance in self.instances], self.mask.shape)

    @property
    def mask_area(self) -> int:
        return int(self.mask.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (the mask itself is left out; save it as an image)."""
        return {
            "query": self.query,
            "status": self.status,
            "instances": [instance.to_dict() for instance in self.instances],
            "box": None if self.box is None else [round(float(v), 2) for v in self.box],
            "box_status": self.box_status,
            "label": self.label,
            "score": round(float(self.score), 4),
            "reasoning": self.reasoning,
            "answer": self.answer,
            "mask_area": self.mask_area,
            "mask_shape": list(self.mask.shape),
            "timings_ms": {k: round(float(v), 2) for k, v in self.timings_ms.items()},
            "random_weights": self.random_weights,
            "generated_tokens": self.generated_tokens,
        }
