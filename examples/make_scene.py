"""Render ``examples/scene.png``, the README's example: shapes drawn like the synthetic scenes (their
colours, outlines and two size classes) on a square image 4 times the training scenes' 112 px, so
that the demo model's resizing to 112 px keeps every proportion.

    python examples/make_scene.py examples/scene.png

Four circles: a large red one top left (the README's "the leftmost circle"), a large blue one top
right, a large green one at the bottom and a small red one bottom right.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np

from training.data.synthetic_scenes import COLORS, make_object

SIZE = 448
BACKGROUND = 228
# shape, colour, size class, equal-area radius and centre, as fractions of the image side (radii in the
# ranges of training.data.synthetic_scenes.SIZE_RADIUS). All circles: the demo model names colours,
# sizes and positions far more reliably than the kind of a shape.
OBJECTS = (("circle", "red", "large", 0.115, (0.25, 0.28)), ("circle", "blue", "large", 0.115, (0.70, 0.27)),
           ("circle", "green", "large", 0.115, (0.45, 0.72)), ("circle", "red", "small", 0.058, (0.80, 0.74)))


def render() -> np.ndarray:
    """The scene as an RGB image."""
    image = np.full((SIZE, SIZE, 3), BACKGROUND, np.uint8)
    for shape, colour, size_name, radius, (cx, cy) in OBJECTS:
        image[make_object(shape, colour, size_name, (cx * SIZE, cy * SIZE), radius * SIZE, SIZE).mask] = COLORS[colour]
    return image


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    if not cv2.imwrite(sys.argv[1], cv2.cvtColor(render(), cv2.COLOR_RGB2BGR)):
        sys.exit(f"could not write {sys.argv[1]}")
