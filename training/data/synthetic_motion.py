"""Synthetic videos: the scenes of ``synthetic_scenes`` set in motion, with the visible mask of every
object on every frame.

The first frame is an ordinary synthetic scene (shapes apart), and the target is a shape that one
referring expression picks out there, so a query on the first frame has exactly one answer. Then
every shape moves in a straight line at its own speed (up to ``MAX_SPEED`` of the image side per
frame), bouncing off the borders. One other shape, the crosser, is aimed at where the target will
be at a frame between ``CROSSING`` of the video (at whatever speed that takes), so their paths
cross; others may cross too.
Shapes are painted in a random depth order, the crosser above the target half of the time, so
they occlude one another and a frame's label image holds each object's visible pixels (0 for the
background, k + 1 for object k). The same generator state gives the same video.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.data.synthetic_expressions import EXPRESSION_TYPES, choose_expressions
from training.data.synthetic_scenes import COLORS, DEFAULT_OBJECTS, UNIT_AREAS, background, make_object, sample_scene

MAX_SPEED = 0.02  # fraction of the image side per frame
CROSSING = (0.3, 0.7)  # the crosser meets the target between these fractions of the video
MIN_FRAMES = 2


@dataclass(frozen=True)
class MovingObject:
    shape: str
    color: str
    size: str
    radius: float  # of the circle with the same area, pixels
    extent: float  # bounding-circle radius, pixels
    centers: np.ndarray  # (T, 2) x, y per frame
    depth: int  # painting order: higher hides lower


@dataclass(frozen=True)
class Crossing:
    """Frames start..end (inclusive) where the target's and another object's bounding circles overlap."""

    start: int
    end: int
    other: int  # the other object's index


@dataclass(frozen=True, eq=False)
class SyntheticVideo:
    frames: np.ndarray  # (T, S, S, 3) uint8
    labels: np.ndarray  # (T, S, S) uint8: 0 background, k + 1 the visible pixels of object k
    objects: tuple[MovingObject, ...]
    target: int  # index of the object the query refers to on frame 0
    crosser: int  # index of the object aimed at the target (it moves as fast as that takes)
    query: str
    expression_type: str

    def crossings(self) -> list[Crossing]:
        return crossings(self.objects, self.target)


def crossings(objects: tuple[MovingObject, ...], target: int) -> list[Crossing]:
    events = []
    mine = objects[target]
    for index, other in enumerate(objects):
        if index == target:
            continue
        near = np.linalg.norm(mine.centers - other.centers, axis=1) < mine.extent + other.extent
        frames = np.flatnonzero(near)
        if frames.size:
            breaks = np.flatnonzero(np.diff(frames) > 1)
            starts = np.concatenate([[frames[0]], frames[breaks + 1]])
            ends = np.concatenate([frames[breaks], [frames[-1]]])
            events += [Crossing(int(s), int(e), index) for s, e in zip(starts, ends)]
    return sorted(events, key=lambda c: (c.start, c.other))


def sample_video(rng: np.random.Generator, size: int, num_frames: int, margin: float,
                 objects: tuple[int, int] = DEFAULT_OBJECTS) -> SyntheticVideo:
    """A video of ``num_frames`` frames of ``size`` px with ``objects`` shapes (at least 2: the target
    and its crosser); ``margin`` is the position margin of the first frame's expression (pixels)."""
    if num_frames < MIN_FRAMES:
        raise ValueError(f"a video needs at least {MIN_FRAMES} frames, got {num_frames}")
    fewest, most = max(2, objects[0]), max(2, objects[1])
    while True:
        scene = sample_scene(rng, size, (fewest, most))
        for target in (int(i) for i in rng.permutation(len(scene.objects))):
            expressions = choose_expressions(rng, target, scene.objects, EXPRESSION_TYPES, 1, margin)
            if expressions:
                break
        else:
            continue
        break
    count = len(scene.objects)
    times = np.arange(num_frames, dtype=np.float64)[:, None]
    starts = [np.array(obj.center) for obj in scene.objects]
    bounds = [(obj.extent + 1, size - obj.extent - 1) for obj in scene.objects]
    angles = rng.uniform(0, 2 * math.pi, count)
    speeds = rng.uniform(0.4, 1.0, count) * MAX_SPEED * size
    paths = [_bounce(start + times * speed * np.array([math.cos(a), math.sin(a)]), *limits)
             for start, speed, a, limits in zip(starts, speeds, angles, bounds)]
    crosser = int(rng.choice([i for i in range(count) if i != target]))
    meet = max(1, int(rng.uniform(*CROSSING) * (num_frames - 1)))
    goal = np.clip(paths[target][min(meet, num_frames - 1)], *bounds[crosser])
    paths[crosser] = _bounce(starts[crosser] + times * (goal - starts[crosser]) / meet, *bounds[crosser])
    depths = [int(d) for d in rng.permutation(count)]
    if (depths[crosser] > depths[target]) != (rng.random() < 0.5):
        depths[crosser], depths[target] = depths[target], depths[crosser]
    moving = tuple(
        MovingObject(obj.shape, obj.color, obj.size, obj.extent * math.sqrt(UNIT_AREAS[obj.shape] / math.pi),
                     obj.extent, path, depth)
        for obj, path, depth in zip(scene.objects, paths, depths))
    frames, labels = _render(moving, background(rng, size), num_frames)
    return SyntheticVideo(frames, labels, moving, target, crosser, expressions[0].text, expressions[0].kind)


def _bounce(points: np.ndarray, low: float, high: float) -> np.ndarray:
    """Straight-line positions folded back into [low, high] on each axis (reflection off the borders)."""
    span = high - low
    phase = np.mod(points - low, 2 * span)
    return low + np.where(phase <= span, phase, 2 * span - phase)


def _render(objects: tuple[MovingObject, ...], base: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    size = base.shape[0]
    frames = np.repeat(base[None], num_frames, axis=0)
    labels = np.zeros((num_frames, size, size), np.uint8)
    order = sorted(range(len(objects)), key=lambda i: objects[i].depth)
    for t in range(num_frames):
        for index in order:
            obj = objects[index]
            center = (float(obj.centers[t, 0]), float(obj.centers[t, 1]))
            mask = make_object(obj.shape, obj.color, obj.size, center, obj.radius, size).mask
            frames[t][mask] = COLORS[obj.color]
            labels[t][mask] = index + 1
    return frames, labels
