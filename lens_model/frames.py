"""Camera frames and masks from callers: checked before any model code sees them.

A frame is an RGB uint8 HxWx3 array (or a PIL image); a mask is a 2-D bool (or integer, nonzero =
target) array of its frame's size. Anything else is an ``InputError`` with a one-line message.
"""
from __future__ import annotations

import numpy as np

from lens_model.errors import InputError

MAX_IMAGE_SIDE = 16384


def validate_image(image: object) -> np.ndarray:
    """Accept an RGB uint8 HxWx3 array (or a PIL image); reject anything else with a clear message."""
    if hasattr(image, "convert") and hasattr(image, "size"):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be an RGB numpy array or PIL image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must have shape HxWx3 (RGB), got {image.shape}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8, got {image.dtype}")
    h, w = image.shape[:2]
    if h < 2 or w < 2 or h > MAX_IMAGE_SIDE or w > MAX_IMAGE_SIDE:
        raise InputError(f"image size {w}x{h} is outside the supported range 2..{MAX_IMAGE_SIDE}")
    return np.ascontiguousarray(image)


def validate_mask(mask: object, image: np.ndarray) -> np.ndarray:
    """A non-empty bool mask of ``image``'s height and width (bool or integer input, nonzero = target)."""
    if not isinstance(mask, np.ndarray):
        raise InputError(f"mask must be a numpy array, got {type(mask).__name__}")
    if mask.shape != image.shape[:2]:
        raise InputError(f"mask shape {mask.shape} does not match the image's {image.shape[:2]}")
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"mask must be bool or integer, got {mask.dtype}")
    mask = mask != 0
    if not mask.any():
        raise InputError("mask is empty: there is nothing to track")
    return mask
