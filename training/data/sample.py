"""One (image, referring expression, target mask) example, whatever dataset it came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lens_model.result import Box

InstanceTarget = tuple[Box, np.ndarray]  # one referent: its box and its bool H x W mask
NO_BOX: Box = (0.0, 0.0, 0.0, 0.0)  # the ``box`` of a no-target sample (it has none)


@dataclass
class Sample:
    """A referring expression and its target in one image.

    ``image`` is H x W x 3 uint8 RGB as stored in the file (EXIF orientation not applied).
    ``mask`` is the binarised H x W target. ``box`` is (x1, y1, x2, y2) in original pixels with an
    exclusive max, so the box of a mask is (xmin, ymin, xmax + 1, ymax + 1); datasets that ship a box
    (COCO ``bbox``, GroundingSuite) keep theirs. ``ignore`` marks pixels excluded from metrics (None
    when there are none). ``ref_id`` groups the expressions that describe the same target;
    ``sample_id`` is unique within the dataset. ``reasoning`` is an optional worked explanation (the
    synthetic generator writes one). ``meta`` carries dataset-specific extras such as the split,
    ReasonSeg's ``is_sentence`` or the synthetic ``expression_type``.

    ``instances`` are the referents, each (box, mask), in the order an answer lists them; ``mask`` is
    their union and ``box`` the first one's. Left out, there is one referent, (``box``, ``mask``). A
    no-target sample (the expression names nothing in the image) has no instances, an all-False
    ``mask`` and ``box`` ``NO_BOX``.
    """

    image: np.ndarray
    text: str
    mask: np.ndarray
    box: Box
    image_id: str
    ref_id: str
    sample_id: str
    source: str
    ignore: np.ndarray | None = None
    reasoning: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    instances: tuple[InstanceTarget, ...] | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"image must be HxWx3 uint8, got {self.image.shape} {self.image.dtype}")
        for name in ("mask", "ignore"):
            array = getattr(self, name)
            if array is None:
                continue
            if array.dtype != np.bool_ or array.shape != self.image.shape[:2]:
                raise ValueError(
                    f"{name} must be a bool array of shape {self.image.shape[:2]}, got {array.shape} {array.dtype}"
                )
        if len(self.box) != 4:
            raise ValueError(f"box must be (x1, y1, x2, y2), got {self.box}")
        self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]
        if self.instances is None:
            self.instances = ((self.box, self.mask),)
        self.instances = tuple((tuple(float(v) for v in box), mask) for box, mask in self.instances)
        for box, mask in self.instances:
            if len(box) != 4 or mask.dtype != np.bool_ or mask.shape != self.image.shape[:2]:
                raise ValueError(f"an instance must be a box (x1, y1, x2, y2) and a bool mask of shape {self.image.shape[:2]}")
        if not self.instances and (self.mask.any() or self.box != NO_BOX):
            raise ValueError("a sample without instances must have an empty mask and the box NO_BOX")

    @property
    def no_target(self) -> bool:
        """The expression names nothing in the image."""
        return not self.instances

    @property
    def boxes(self) -> list[Box]:
        return [box for box, _ in self.instances]

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
