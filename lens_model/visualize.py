"""Drawing a segmentation result onto its image (CLI overlay, ROS debug image)."""
from __future__ import annotations

import cv2
import numpy as np

from lens_model.result import SegmentationResult

MASK_COLOUR = (255, 40, 40)  # RGB
BOX_COLOUR = (40, 220, 40)


def draw_overlay(image: np.ndarray, result: SegmentationResult, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 image with the mask tinted, the box drawn and the label written above it."""
    out = image.copy()
    if result.mask.any():
        tint = np.array(MASK_COLOUR, np.float32)
        out[result.mask] = (out[result.mask].astype(np.float32) * (1 - alpha) + tint * alpha).astype(np.uint8)
    thickness = max(1, round(min(image.shape[:2]) / 200))
    if result.box is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in result.box)
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), BOX_COLOUR, thickness)
        caption = f"{result.label or result.query} {result.score:.2f}"
        scale = max(0.35, min(image.shape[:2]) / 600)
        (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 4 if y1 - th - 4 >= 0 else min(image.shape[0] - 1, y2 + th + 4)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty + base), (0, 0, 0), cv2.FILLED)
        cv2.putText(out, caption, (x1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out
