"""LENS: reasoning segmentation with a Qwen2.5-VL reasoner, context queries and SAM 2.

Heavy imports (torch, transformers, sam2) happen on first use, so light modules such as
``lens_model.result`` and ``lens_model.answer_parser`` stay cheap to import from the ROS core.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LensConfig": "lens_model.config",
    "LensModel": "lens_model.modeling",
    "LensOutput": "lens_model.modeling",
    "build_lens": "lens_model.modeling",
    "LensPredictor": "lens_model.predictor",
    "LensTracker": "lens_model.tracker",
    "TrackerConfig": "lens_model.tracker",
    "load_model": "lens_model.checkpoints",
    "save_model": "lens_model.checkpoints",
    "SegmentationResult": "lens_model.result",
    "parse_answer": "lens_model.answer_parser",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lens_model' has no attribute {name!r}")
