"""The debug image: the frame with the mask tinted, the box outlined and the label written."""
from __future__ import annotations

import cv2
import numpy as np

from lens_model.result import SegmentationResult

MASK_RGB = np.array([0, 200, 255], dtype=np.float32)
BOX_RGB = (255, 64, 0)
MASK_ALPHA = 0.45


def draw_overlay(rgb: np.ndarray, result: SegmentationResult, fallback_label: str) -> np.ndarray:
    canvas = rgb.copy()
    tinted = canvas[result.mask].astype(np.float32) * (1.0 - MASK_ALPHA) + MASK_RGB * MASK_ALPHA
    canvas[result.mask] = tinted.round().astype(np.uint8)
    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 240))
    text = f"{result.label or fallback_label} {result.score:.2f}"
    if result.box is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in result.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_RGB, thickness)
        anchor = (max(0, x1), max(12 * thickness, y1 - 4))
    else:
        text = f"no box: {result.box_status}"
        anchor = (4, 14 * thickness)
    cv2.putText(canvas, text, anchor, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * thickness, BOX_RGB, thickness, cv2.LINE_AA)
    return canvas
