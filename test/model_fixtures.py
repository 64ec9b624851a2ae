"""Shared helpers for model tests: tiny models and a fixed test image."""
from __future__ import annotations

import numpy as np

from lens_model.hub import build_tiny_random
from lens_model.modeling import LensModel


def tiny_model(**overrides) -> LensModel:
    return build_tiny_random(seed=0, **overrides).eval()


def scene(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 230, np.uint8)
    image[20:60, 10:50] = (220, 30, 30)
    image[30:80, 70:120] = (30, 30, 220)
    return np.clip(image.astype(int) + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
