"""The result of one text-prompted segmentation, independent of how it was produced."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Box = tuple[float, float, float, float]


def mask_to_box(mask: np.ndarray) -> Box:
    """(xmin, ymin, xmax + 1, ymax + 1) of a non-empty mask, in its pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("an empty mask has no box")
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


@dataclass
class SegmentationResult:
    """What LENS returns for one (image, query) pair.

    ``mask`` is a boolean array of the original image's H x W. ``box`` is (x1, y1, x2, y2) in
    original-image pixels, or ``None`` when the model's answer held no usable box; then
    ``box_status`` says why (for example ``"no box in answer"`` or ``"degenerate box"``).
    ``score`` is SAM 2's predicted IoU for the chosen mask, clamped to [0, 1].
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

    @property
    def mask_area(self) -> int:
        return int(self.mask.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (the mask itself is left out; save it as an image)."""
        return {
            "query": self.query,
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
