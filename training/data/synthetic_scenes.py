"""Random scenes of flat coloured shapes on a plain or lightly textured background, with exact masks.

Every shape is a polygon (a circle is a 48-gon). Its mask is that polygon rasterised by
pycocotools and the image is painted from the mask, so the COCO polygon written to
``instances.json`` reproduces the painted pixels exactly. Shapes never touch (their bounding circles
keep a gap), so no mask is occluded. Shape sizes are equal-area: "small" and "large" compare the
same way for a triangle and a circle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.data.masks import Polygons

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (235, 205, 35),
    "purple": (135, 60, 180),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
SIZES = ("small", "large")
# Radius of the circle with the same area, as a fraction of the image side.
SIZE_RADIUS = {"small": (0.05, 0.065), "large": (0.10, 0.125)}
GAP = 0.03  # minimum distance between two shapes' bounding circles, fraction of the side
MAX_PLACEMENT_TRIES = 60
DEFAULT_OBJECTS = (2, 6)  # inclusive range of shapes per scene


@dataclass(frozen=True, eq=False)
class SceneObject:
    shape: str
    color: str
    size: str
    center: tuple[float, float]
    extent: float  # bounding-circle radius in pixels
    polygon: tuple[float, ...]  # flat x1, y1, x2, y2, ... rounded to 0.01 px
    mask: np.ndarray


@dataclass(frozen=True, eq=False)
class Scene:
    image: np.ndarray
    objects: tuple[SceneObject, ...]


def _unit_outline(shape: str) -> np.ndarray:
    """Vertices on the unit circle (y pointing down), shape upright."""

    def ring(count: int, radii: tuple[float, ...] = (1.0,)) -> np.ndarray:
        angles = -math.pi / 2 + 2 * math.pi * np.arange(count) / count
        radius = np.resize(np.asarray(radii), count)
        return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)

    if shape == "circle":
        return ring(48)
    if shape == "square":
        return ring(4) @ np.array(
            [[math.cos(math.pi / 4), -math.sin(math.pi / 4)], [math.sin(math.pi / 4), math.cos(math.pi / 4)]]
        )
    if shape == "triangle":
        return ring(3)
    if shape == "diamond":
        return ring(4)
    if shape == "star":
        return ring(10, (1.0, 0.45))
    raise ValueError(f"unknown shape {shape!r}")


def _area(outline: np.ndarray) -> float:
    x, y = outline[:, 0], outline[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


UNIT_OUTLINES = {shape: _unit_outline(shape) for shape in SHAPES}
UNIT_AREAS = {shape: _area(outline) for shape, outline in UNIT_OUTLINES.items()}


def sample_scene(rng: np.random.Generator, size: int, objects: tuple[int, int] = DEFAULT_OBJECTS) -> Scene:
    """``objects`` (inclusive range, default 2-6) non-touching shapes drawn from a per-scene palette
    of 1-3 shapes and 1-3 colours (so scenes repeat attributes and need colour, size, position or
    relation to tell objects apart). One-object scenes serve as a grounding curriculum."""
    fewest, most = objects
    if not 1 <= fewest <= most:
        raise ValueError(f"object count range must satisfy 1 <= min <= max, got {objects}")
    while True:
        count = int(rng.integers(fewest, most + 1))
        shapes = [str(s) for s in rng.choice(SHAPES, size=int(rng.integers(1, 4)), replace=False)]
        colors = [str(c) for c in rng.choice(list(COLORS), size=int(rng.integers(1, 4)), replace=False)]
        objects: list[SceneObject] = []
        for _ in range(count):
            placed = _place(
                rng, size, str(rng.choice(shapes)), str(rng.choice(colors)), str(rng.choice(SIZES)), objects
            )
            if placed is not None:
                objects.append(placed)
        if len(objects) >= fewest:
            break
    image = background(rng, size)
    for obj in objects:
        image[obj.mask] = COLORS[obj.color]
    return Scene(image=image, objects=tuple(objects))


def bounding_radius(shape: str, radius: float) -> float:
    """Bounding-circle radius of ``shape`` with the area of a circle of ``radius``."""
    return radius * math.sqrt(math.pi / UNIT_AREAS[shape])


def make_object(
    shape: str, color: str, size_name: str, center: tuple[float, float], radius: float, size: int
) -> SceneObject:
    """``shape`` with the area of a circle of ``radius`` pixels, centred at ``center`` of a ``size``-pixel image."""
    extent = bounding_radius(shape, radius)
    outline = UNIT_OUTLINES[shape] * extent + center
    polygon = tuple(round(float(v), 2) for v in outline.reshape(-1))
    return SceneObject(shape, color, size_name, center, extent, polygon, Polygons((polygon,)).to_mask(size, size))


def _place(
    rng: np.random.Generator, size: int, shape: str, color: str, size_name: str, others: list[SceneObject]
) -> SceneObject | None:
    radius = rng.uniform(*SIZE_RADIUS[size_name]) * size
    extent = bounding_radius(shape, radius)
    low, high = extent + 2, size - extent - 2
    for _ in range(MAX_PLACEMENT_TRIES):
        cx, cy = (float(v) for v in rng.uniform(low, high, size=2))
        if all(math.dist((cx, cy), o.center) >= extent + o.extent + GAP * size for o in others):
            return make_object(shape, color, size_name, (cx, cy), radius, size)
    return None


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A light neutral colour, half the time with faint noise and a gentle gradient."""
    base = rng.integers(175, 236) + rng.integers(-8, 9, size=3)
    image = np.broadcast_to(base.astype(np.float64), (size, size, 3)).copy()
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * math.pi)
        ramp = np.linspace(-1.0, 1.0, size)
        gradient = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
        image += (rng.uniform(4, 12) * gradient)[..., None]
        image += rng.normal(0, rng.uniform(2, 6), size=(size, size, 1))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
