"""Drawing a segmentation result onto its image (CLI overlay, ROS debug image, video overlay)."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lens_model.result import Box, SegmentationResult

MASK_COLOUR = (255, 40, 40)  # RGB
BOX_COLOUR = (40, 220, 40)


def draw_overlay(image: np.ndarray, result: SegmentationResult, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 image with the mask (every instance's) tinted and each instance's box drawn, its label and
    score written above it; without an instance, why there is none at the bottom left."""
    if result.instances:
        captions = [(instance.box, f"{instance.label or result.query} {instance.score:.2f}")
                    for instance in result.instances]
    elif result.status == "no_target":
        captions = [(None, "no target")]
    else:
        captions = [(None, f"no box: {result.box_status}")]
    return draw_mask_and_boxes(image, result.mask, captions, alpha)


def draw_mask_and_boxes(image: np.ndarray, mask: np.ndarray, captions: Sequence[tuple[Box | None, str]],
                        alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 image with ``mask`` tinted and, for each (box, caption), the box drawn and the caption
    written above it (at the bottom left for a ``None`` box)."""
    out = image.copy()
    if mask.any():
        tint = np.array(MASK_COLOUR, np.float32)
        out[mask] = (out[mask].astype(np.float32) * (1 - alpha) + tint * alpha).round().astype(np.uint8)
    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 200))
    scale = max(0.35, min(height, width) / 600)
    for box, caption in captions:
        if box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), BOX_COLOUR, thickness)
            x, y_top, y_bottom = x1, y1, y2
        else:
            x, y_top, y_bottom = 2, height, 0
        (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y_top - 4 if y_top - th - 4 >= 0 else min(height - 1, y_bottom + th + 4)
        cv2.rectangle(out, (x, ty - th - base), (x + tw, ty + base), (0, 0, 0), cv2.FILLED)
        cv2.putText(out, caption, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out
