"""Masks on every frame between queries: a finished query's mask seeds a track, and each new frame
gets a mask, a box, a score and a ``lost`` flag from SAM 2 alone (the reasoner never runs).

    tracker = predictor.tracker(TrackerConfig(mode="box"))
    tracker.start(frame0, result.mask)
    step = tracker.step(frame1)      # step.mask, step.box, step.score, step.lost, step.timings_ms

Several instances, one tracker each, share one image encoding per frame: ``frame = trackers[0].encode(frame1)``,
then ``tracker.step(frame)`` for each (``lens_model.instance_tracks`` does this).

Two modes:

* ``box``: the box of the last good mask, grown by ``box_margin`` of its size on every side, is a
  SAM 2 box prompt on the new frame (prompt encoder + mask decoder of the model's own SAM 2). It
  needs no other weights. SAM 2 answers a box with its single-mask output (token 0), as
  SAM 2's image predictor recommends for boxes (a box is not ambiguous) and as the demo's SAM 2 was
  trained; where the model's SAM 2 is configured for it (the released checkpoints), an unstable
  single mask falls back to the multimask candidate of highest predicted IoU (SAM 2's
  ``dynamic_multimask_via_stability``, the same rule the LENS query path runs under).
* ``memory``: SAM 2's own video propagation (memory attention over the memories of the seed and
  the recent frames, object pointers, memory encoder; ``lens_model.sam_video``). It needs the
  memory weights of the same SAM 2 (``memory_weights``: an official SAM 2 ``.pt`` or this project's
  safetensors file); without them it is an error, never random memory weights. Where SAM 2 offers
  several candidate masks on a frame it keeps the one of highest predicted IoU, as its video
  predictor does.

A step is ``lost`` when its mask is empty (in memory mode also when SAM 2 judges the object absent),
when SAM 2's predicted IoU is below ``min_score``, or when its area, as a share of the frame, is
below ``min_area_ratio`` or above ``max_area_ratio`` times that of the last good mask. A lost step
still returns the mask SAM 2 gave, but the last good mask stays the reference: the next box prompt
and area comparison use it. Whether and when to re-run the query is the caller's choice; the
tracker stays ``active`` until ``stop`` or the next ``start``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from lens_model import sam_head, sam_video
from lens_model.errors import InputError
from lens_model.frames import validate_image, validate_mask
from lens_model.modeling import LensModel
from lens_model.result import Box, mask_to_box
from lens_model.timing import StageTimer
from lens_model.typed_json import CheckedFields, bounded

TrackMode = Literal["box", "memory"]


@dataclass
class TrackerConfig(CheckedFields):
    mode: TrackMode = "box"
    box_margin: float = bounded(0.1, 0.0, 1.0)  # the last good mask's box grows by this share of its size per side
    min_score: float = bounded(0.3, 0.0, 1.0)  # SAM 2's predicted IoU below this -> lost
    min_area_ratio: float = bounded(0.25, 0.0, 1.0)  # area / last good area below this -> lost (collapse)
    max_area_ratio: float = bounded(1.5, 1.0, 1e6)  # ... above this -> lost (it spread onto a neighbour)


@dataclass
class TrackStep:
    mask: np.ndarray  # bool H x W of the frame it ran on
    box: Box | None  # the mask's box in that frame's pixels, None for an empty mask
    score: float  # SAM 2's predicted IoU, clamped to [0, 1]
    lost: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # why the step is lost ("empty mask", "score 0.12 < 0.30", ...), None when not


@dataclass(frozen=True)
class EncodedFrame:
    """A frame through SAM 2's image encoder (``LensTracker.encode``), for every tracker of the same model,
    mode and memory weights: following N instances costs one image encoding per frame, not N."""

    image: np.ndarray  # the validated RGB frame
    features: sam_head.SamImageFeatures | sam_video.FrameFeatures
    encoder: tuple[int, str, str]  # who can read it: (id of the model, mode, memory weights)
    timings_ms: dict[str, float]  # preprocess and sam_image_encoder


@dataclass(frozen=True)
class _Reference:
    """The last good mask, independent of frame size: its box in [0, 1] coordinates, its area share,
    the box centre's velocity per step, and how many steps ago it was."""

    box: tuple[float, float, float, float]
    area: float
    velocity: tuple[float, float] = (0.0, 0.0)
    age: int = 0

    @classmethod
    def of(cls, mask: np.ndarray) -> _Reference:
        height, width = mask.shape
        x1, y1, x2, y2 = mask_to_box(mask)
        return cls((x1 / width, y1 / height, x2 / width, y2 / height), float(mask.mean()))

    def followed_by(self, mask: np.ndarray) -> _Reference:
        """The reference after a good step: the new mask, and the velocity smoothed over the steps
        (half the last one, half the one before: a mask's box jitters by a pixel or two)."""
        new = _Reference.of(mask)
        shift = [(a - b) / (self.age + 1) for a, b in zip(_centre(new.box), _centre(self.box))]
        return _Reference(new.box, new.area, (0.5 * (self.velocity[0] + shift[0]), 0.5 * (self.velocity[1] + shift[1])))

    def aged(self) -> _Reference:
        return _Reference(self.box, self.area, self.velocity, self.age + 1)

    def predicted_box(self) -> tuple[float, float, float, float]:
        """The box moved on at its velocity to the coming step (constant motion through lost steps)."""
        dx, dy = (v * (self.age + 1) for v in self.velocity)
        x1, y1, x2, y2 = self.box
        return x1 + dx, y1 + dy, x2 + dx, y2 + dy


def _centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


class LensTracker:
    """One target through a stream of frames (one tracker per instance to follow)."""

    def __init__(self, model: LensModel, config: TrackerConfig | None = None,
                 memory_weights: str | Path | None = None) -> None:
        self.model = model
        self.config = config or TrackerConfig()
        self._video: torch.nn.Module | None = None
        if self.config.mode == "memory":
            if memory_weights is None:
                raise InputError("memory tracking needs memory_weights: the SAM 2 checkpoint (.pt) the model's SAM 2 "
                                 "comes from (SAM 2-L for OuyBin/LENS) or a .safetensors file of memory weights")
            self._video = sam_video.build_video_sam(model)
            sam_video.load_video_weights(self._video, memory_weights)
        self._encoder = (id(model), self.config.mode, "" if memory_weights is None else str(memory_weights))
        self._track: sam_video.VideoTrack | None = None
        self._reference: _Reference | None = None

    @property
    def active(self) -> bool:
        """Started and not stopped (a lost track stays active: re-acquiring is the caller's choice)."""
        return self._reference is not None

    def stop(self) -> None:
        self._reference = None
        self._track = None

    @torch.inference_mode()
    def start(self, image: object, mask: object) -> None:
        """Seed the track from a query's mask (bool H x W) on the frame it was computed on (RGB uint8
        H x W x 3). The track follows the mask's largest connected region: a query's mask may carry
        stray blobs, and one tracker follows one object (start one per instance to follow several)."""
        image = validate_image(image)
        mask = _main_region(validate_mask(mask, image))
        if self._video is not None:
            track = sam_video.VideoTrack(self._video)
            track.seed(self.encode(image).features, torch.from_numpy(mask).to(self.model.device))
            self._track = track
        self._reference = _Reference.of(mask)

    @torch.inference_mode()
    def encode(self, image: object) -> EncodedFrame:
        """A frame (RGB uint8 H x W x 3) through SAM 2's image encoder, for ``step`` of this tracker or of
        any other of the same model, mode and memory weights. A bad frame raises InputError."""
        image = validate_image(image)
        model, timer, device = self.model, StageTimer(), self.model.device
        with timer.stage("preprocess", device):
            pixels = model.sam_pixels([image], None if self._video is None else torch.float32)
        with timer.stage("sam_image_encoder", device):
            features = (sam_head.encode_images(model.sam, pixels) if self._video is None
                        else sam_video.encode_frame(self._video, pixels))
        return EncodedFrame(image, features, self._encoder, dict(timer.ms))

    @torch.inference_mode()
    def step(self, frame: object) -> TrackStep:
        """The target on a new frame: an RGB image (any size), or an ``encode``d one shared with the trackers
        of other instances (its encoding is then timed where it was made, not here). A bad frame raises
        InputError and changes nothing."""
        if self._reference is None:
            raise RuntimeError("the tracker is not started: call start(image, mask) first")
        encoded = frame if isinstance(frame, EncodedFrame) else self.encode(frame)
        if encoded.encoder != self._encoder:
            raise ValueError("the frame was encoded by a tracker of another model, mode or memory weights")
        model, timer, device = self.model, StageTimer(), self.model.device
        height, width = encoded.image.shape[:2]
        prompt = None
        if self._track is None:
            prompt = self._prompt_box()
            with timer.stage("mask_decoder", device):
                boxes = torch.tensor([prompt], device=device) * model.config.sam_image_size
                logits, iou = sam_head.decode_box_masks(model.sam, encoded.features, boxes)
                logits, score = logits[0], float(iou[0])
        else:
            with timer.stage("memory_track_step", device):
                propagated = self._track.propagate(encoded.features)
            logits, score = propagated.low_res_logits, propagated.score
        with timer.stage("postprocess", device):
            mask = (sam_head.upsample_logits(logits[None], height, width)[0] > model.config.mask_threshold).cpu().numpy()
            if prompt is not None:  # a blob outside the prompt is another object SAM 2 leaked onto
                mask = _main_region(mask, prompt)
            score = min(max(score, 0.0), 1.0)
            reason = self._lost_reason(mask, score)
            self._reference = self._reference.aged() if reason is not None else self._reference.followed_by(mask)
        box = mask_to_box(mask) if mask.any() else None
        timings = timer.ms if frame is encoded else {**encoded.timings_ms, **timer.ms}
        return TrackStep(mask, box, score, reason is not None, {**timings, "total": sum(timings.values())}, reason)

    def _prompt_box(self) -> list[float]:
        """The reference box where its motion puts it now, grown by ``box_margin`` of its size per side,
        in [0, 1] coordinates."""
        x1, y1, x2, y2 = self._reference.predicted_box()
        grow_x, grow_y = self.config.box_margin * (x2 - x1), self.config.box_margin * (y2 - y1)
        return [max(0.0, x1 - grow_x), max(0.0, y1 - grow_y), min(1.0, x2 + grow_x), min(1.0, y2 + grow_y)]

    def _lost_reason(self, mask: np.ndarray, score: float) -> str | None:
        config = self.config
        if not mask.any():
            return "empty mask"
        if score < config.min_score:
            return f"score {score:.2f} < {config.min_score:.2f}"
        ratio = float(mask.mean()) / self._reference.area
        if ratio < config.min_area_ratio:
            return f"area ratio {ratio:.2f} < {config.min_area_ratio:.2f}"
        if ratio > config.max_area_ratio:
            return f"area ratio {ratio:.2f} > {config.max_area_ratio:.2f}"
        return None


def _main_region(mask: np.ndarray, box: list[float] | None = None) -> np.ndarray:
    """The connected region of ``mask`` with the most pixels (counting only those inside ``box``,
    [0, 1] coordinates, when given); ``mask`` itself when it is one region or none."""
    count, regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    counted = regions
    if box is not None:
        height, width = mask.shape
        rows = slice(int(box[1] * height), int(np.ceil(box[3] * height)))
        counted = regions[rows, int(box[0] * width):int(np.ceil(box[2] * width))]
    sizes = np.bincount(counted.ravel(), minlength=count)
    sizes[0] = 0  # the background
    return regions == int(sizes.argmax())
