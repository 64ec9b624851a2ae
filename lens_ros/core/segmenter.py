"""The model seen by the node: a ``Segmenter`` protocol plus loading and releasing it."""
from __future__ import annotations

import gc
import sys
from typing import Any, Protocol

import numpy as np

from lens_model.result import SegmentationResult


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
