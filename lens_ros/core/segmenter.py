"""The model seen by the node: ``Segmenter`` and ``Tracker`` protocols, plus loading and releasing them."""
from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from lens_model import instance_tracks
from lens_model.result import SegmentationResult
from lens_ros.core.params import LensParams


class Tracker(instance_tracks.Tracker, Protocol):
    """lens_model.tracker.LensTracker: seeded with a query's mask, then one step per frame, until stopped."""

    @property
    def active(self) -> bool: ...

    def stop(self) -> None: ...


class Segmenter(Protocol):
    def predict(
        self,
        image_rgb: np.ndarray,
        query: str,
        *,
        template: str | None = None,
        max_new_tokens: int | None = None,
    ) -> SegmentationResult: ...

    def describe(self) -> dict[str, Any]: ...

    def tracker(self, config: Any = None, memory_weights: str | None = None) -> Tracker: ...


TrackerOpener = Callable[[Segmenter, LensParams], Tracker]


def tracker_fields(params: LensParams) -> dict[str, Any]:
    """The node's ``tracking.*`` thresholds as the fields of lens_model.tracker.TrackerConfig."""
    return {"mode": params.track_mode, "box_margin": params.track_box_margin, "min_score": params.track_min_score,
            "min_area_ratio": params.track_min_area_ratio, "max_area_ratio": params.track_max_area_ratio}


def open_tracker(segmenter: Segmenter, params: LensParams) -> Tracker:
    """The loaded model's tracker with the node's thresholds (TrackerConfig checks their types and ranges)."""
    from lens_model.tracker import TrackerConfig  # imports torch: only when the node activates

    config = TrackerConfig(**tracker_fields(params))
    return segmenter.tracker(config, memory_weights=params.track_memory_weights or None)


def load_segmenter(name: str, device: str, dtype: str) -> Segmenter:
    """A ``LensPredictor`` for the model ``name`` (imports torch, so only when the node activates)."""
    from lens_model.predictor import LensPredictor

    return LensPredictor.from_pretrained(name, device=device, dtype=dtype)


def release_accelerator_memory() -> None:
    """Give cached GPU memory back after the model's last reference is gone."""
    gc.collect()
    torch = sys.modules.get("torch")  # never import torch just to free memory
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (and torch.OutOfMemoryError) without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)
