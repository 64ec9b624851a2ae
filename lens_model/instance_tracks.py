"""Every instance of a query followed through the frames after it: one tracker per instance, seeded
with that instance's own mask (``lens_model.tracker``: one tracker follows one object). Each frame goes
through SAM 2's image encoder once, by the first tracker, and every tracker reads that encoding.

A step the tracker loses is a ``lost`` step without a mask, and the tracker goes on with the next frame:
it keeps searching where the target was heading (in box mode ``LensTracker``'s reference box moves on at
its velocity), so the instance is ``tracking`` again once the tracker finds it. A frame a tracker refuses
(``InputError``) is an ``error`` step and the tracker goes on too. At most ``answer_parser.MAX_INSTANCES``
instances, so at most that many trackers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lens_model.errors import InputError
from lens_model.result import Box, Instance, instance_map

# What one instance did on one frame: the query ran on it, the tracker gave it a mask, lost it on it,
# could not use the frame (the track goes on either way), or there is no track (its mask was empty).
QUERY, TRACKING, LOST, ERROR, NO_TRACK = "query", "tracking", "lost", "error", "no_track"


class EncodedFrame(Protocol):  # lens_model.tracker.EncodedFrame
    timings_ms: dict[str, float]


class Tracker(Protocol):  # lens_model.tracker.LensTracker
    def start(self, image: np.ndarray, mask: np.ndarray) -> None: ...

    def encode(self, image: np.ndarray) -> EncodedFrame: ...

    def step(self, frame: np.ndarray | EncodedFrame) -> Any: ...


@dataclass
class InstanceStep:
    status: str
    score: float | None = None
    box: Box | None = None
    mask: np.ndarray | None = None  # for ``tracking`` and ``query``
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # the tracker's stages

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "score": None if self.score is None else round(float(self.score), 4),
                "box": None if self.box is None else [round(float(v), 2) for v in self.box],
                "mask_area": 0 if self.mask is None else int(self.mask.sum()), "error": self.error}


class InstanceTracks:
    """The trackers of one query's instances, in the answer's order."""

    def __init__(self, new_tracker: Callable[[], Tracker], image: np.ndarray, instances: Sequence[Instance]) -> None:
        self._trackers: list[Tracker | None] = []
        for instance in instances:
            tracker = None
            if instance.mask.any():
                tracker = new_tracker()
                tracker.start(image, instance.mask)
            self._trackers.append(tracker)

    def step(self, frame: np.ndarray) -> list[InstanceStep]:
        """Each instance's step on ``frame``; the frame's one encoding is timed in the first tracker's step."""
        trackers = [tracker for tracker in self._trackers if tracker is not None]
        if not trackers:
            return [InstanceStep(NO_TRACK) for _ in self._trackers]
        try:
            encoded = trackers[0].encode(frame)
        except InputError as exc:  # no tracker can use it; they keep their state
            return self.refused(f"tracker rejected the frame: {exc}")
        steps = []
        for tracker in self._trackers:
            if tracker is None:
                steps.append(InstanceStep(NO_TRACK))
                continue
            try:
                step = tracker.step(encoded)
            except InputError as exc:  # the tracker kept its state
                steps.append(InstanceStep(ERROR, error=f"tracker rejected the frame: {exc}"))
                continue
            timings = step.timings_ms
            if tracker is trackers[0]:
                timings = {**encoded.timings_ms, **timings,
                           "total": timings.get("total", 0.0) + sum(encoded.timings_ms.values())}
            if step.mask.shape != frame.shape[:2]:
                steps.append(InstanceStep(ERROR, error=f"tracker returned a {step.mask.shape} mask for a "
                                                       f"{frame.shape[:2]} frame", timings_ms=timings))
            elif step.lost:  # no mask: it is not the target
                steps.append(InstanceStep(LOST, step.score, step.box, timings_ms=timings))
            else:
                steps.append(InstanceStep(TRACKING, step.score, step.box, step.mask, timings_ms=timings))
        return steps

    def refused(self, error: str) -> list[InstanceStep]:
        """The steps of a frame none of the trackers may see (the trackers are left as they were)."""
        return [InstanceStep(NO_TRACK) if tracker is None else InstanceStep(ERROR, error=error)
                for tracker in self._trackers]


@dataclass(frozen=True)
class FrameSummary:
    """A frame of several instances in one status: ``tracking`` while any instance is, else ``lost`` when one
    was lost on it, else ``error`` when one could not use it, else ``no_track``; the mean score and the box
    around the boxes of the instances in that status, and the first of their errors."""

    status: str
    score: float | None
    box: Box | None
    error: str | None

    @classmethod
    def of(cls, steps: Sequence[InstanceStep]) -> FrameSummary:
        status = next((s for s in (TRACKING, LOST, ERROR) if any(step.status == s for step in steps)), NO_TRACK)
        chosen = [step for step in steps if step.status == status]
        scores = [step.score for step in chosen if step.score is not None]
        boxes = [step.box for step in chosen if step.box is not None]
        box = None if not boxes else (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                                      max(b[3] for b in boxes))
        error = next((step.error for step in chosen if step.error is not None), None)
        return cls(status, sum(scores) / len(scores) if scores else None, box, error)


def frame_mask(steps: Sequence[InstanceStep], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The union of the steps' masks and the instance image (``result.instance_map``) of a frame of ``shape``."""
    empty = np.zeros(shape, bool)
    masks = [empty if step.mask is None else step.mask for step in steps]
    return np.logical_or.reduce(masks) if masks else empty, instance_map(masks, shape)


def query_steps(instances: Sequence[Instance]) -> list[InstanceStep]:
    """The query's instances as the steps of the frame it ran on."""
    return [InstanceStep(QUERY, instance.score, instance.box, instance.mask) for instance in instances]
