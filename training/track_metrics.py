"""Tracking metrics over a video: mean IoU over frames, lost rate, identity switches at crossings.

Every frame after the seed frame is scored. A frame's prediction is the track's mask, or nothing
when the step is ``lost`` (a caller publishes no mask for a lost step), so a lost step scores IoU 1
where the target is hidden and 0 where it is visible.

* **mean IoU**: the mean over a video's frames of the IoU with the target's visible mask
  (``training.iou``: an empty prediction on an empty target counts 1); the summary averages videos,
  and also gives the mean over all frames apart (outside every crossing) and at crossings.
* **lost rate**: lost steps / scored frames.
* **identity**: a frame's prediction is *on the target* when it overlaps the target's visible
  pixels at least as much as any other object's and overlaps some object, *on another object*
  when it overlaps some other object more than the target, and undecided otherwise (no
  prediction, or background only).
* **identity switch**: a frame on another object whose last decided frame before it (the seed
  frame counts as on the target) was on the target. A track that stays on the wrong object counts
  one switch; one that comes back and leaves again counts another.
* **crossings**: the stretches of frames in which the target's and another object's bounding
  circles overlap (from the generator, ``training.data.videos``); ``switches_per_crossing`` relates
  the two, and a switch is also counted ``at_crossing`` when its frame lies within one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from training.iou import mask_iou

ON_TARGET, ON_OTHER, UNDECIDED = "target", "other", "undecided"


def identity(prediction: np.ndarray | None, labels: np.ndarray, target: int) -> str:
    """Which object a frame's prediction is on (module docstring), from the frame's label image."""
    if prediction is None or not prediction.any():
        return UNDECIDED
    overlaps = np.bincount(labels[prediction].ravel(), minlength=max(int(labels.max()), target) + 1)
    overlaps[0] = 0  # background
    if overlaps.max() == 0:
        return UNDECIDED
    others = np.delete(overlaps, target)
    return ON_OTHER if others.max() > overlaps[target] else ON_TARGET


@dataclass
class VideoScore:
    """The frames of one video after its seed, scored one by one (``add``)."""

    video: str
    crossing_frames: frozenset[int] = frozenset()
    seed_iou: float | None = None  # the seed mask's IoU on frame 0 (None: the track never started)
    ious: list[float] = field(default_factory=list)
    at_crossing: list[bool] = field(default_factory=list)  # per scored frame: within a crossing
    lost: int = 0
    switches: int = 0
    switches_at_crossings: int = 0
    crossings: int = 0
    frames_on_other: int = 0
    _last_decided: str = ON_TARGET

    def add(self, frame: int, mask: np.ndarray | None, lost: bool, labels: np.ndarray, target: int) -> None:
        """Frame ``frame``'s step: its mask (None when no track ran), whether it was lost, the label image."""
        prediction = None if lost or mask is None else mask
        truth = labels == target
        self.ious.append(mask_iou(np.zeros_like(truth) if prediction is None else prediction, truth))
        self.at_crossing.append(frame in self.crossing_frames)
        self.lost += int(lost)
        on = identity(prediction, labels, target)
        if on == ON_OTHER:
            self.frames_on_other += 1
            if self._last_decided == ON_TARGET:
                self.switches += 1
                self.switches_at_crossings += int(frame in self.crossing_frames)
        if on != UNDECIDED:
            self._last_decided = on

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.ious)) if self.ious else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["_last_decided"], data["ious"], data["at_crossing"], data["crossing_frames"]
        return {**data, "frames": len(self.ious), "mean_iou": self.mean_iou}


def crossing_frames(crossings: list[tuple[int, int]]) -> frozenset[int]:
    return frozenset(t for start, end in crossings for t in range(start, end + 1))


def summarize(scores: list[VideoScore], min_seed_iou: float) -> dict[str, Any]:
    """Totals over all videos, and over the videos whose seed mask had IoU >= ``min_seed_iou``
    on frame 0 (where the first frame's query succeeded)."""
    good = [s for s in scores if s.seed_iou is not None and s.seed_iou >= min_seed_iou]
    return {"all": _totals(scores), f"seed_iou>={min_seed_iou:g}": _totals(good)}


def _totals(scores: list[VideoScore]) -> dict[str, Any]:
    frames = sum(len(s.ious) for s in scores)
    crossings = sum(s.crossings for s in scores)
    switches = sum(s.switches for s in scores)
    seeds = [s.seed_iou for s in scores if s.seed_iou is not None]
    apart = [iou for s in scores for iou, crossing in zip(s.ious, s.at_crossing) if not crossing]
    crossing = [iou for s in scores for iou, crossing in zip(s.ious, s.at_crossing) if crossing]
    return {
        "videos": len(scores),
        "frames": frames,
        "seed_iou": float(np.mean(seeds)) if seeds else None,
        "mean_iou": float(np.mean([s.mean_iou for s in scores])) if scores else None,
        "min_video_iou": min((s.mean_iou for s in scores), default=None),
        "iou_apart": float(np.mean(apart)) if apart else None,  # frames outside every crossing
        "iou_at_crossings": float(np.mean(crossing)) if crossing else None,
        "lost_rate": sum(s.lost for s in scores) / frames if frames else None,
        "identity_switches": switches,
        "switches_at_crossings": sum(s.switches_at_crossings for s in scores),
        "crossings": crossings,
        "switches_per_crossing": switches / crossings if crossings else None,
        "frames_on_other_rate": sum(s.frames_on_other for s in scores) / frames if frames else None,
    }
