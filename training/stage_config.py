"""The config sections every training stage shares: which model to start from, and which data.

A stage's config dataclass derives from ``StageConfig`` and adds its own sections (loss weights,
rewards, ...); ``training.common.config`` merges YAML and ``key=value`` overrides onto it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from training.common.schema import TrainConfig


@dataclass
class ModelSection:
    # The LENS model to start from: a built-in name, a folder, a hub id or a previous stage's output ...
    init: str = ""
    # ... and LensConfig fields over its config. Without ``init``, a new LENS around the pretrained
    # Qwen-VL reasoner ``lens.reasoner`` (LensConfig's defaults otherwise: the released architecture).
    lens: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"  # weights on load; mixed precision is the engine's bf16 switch
    gradient_checkpointing: bool = False


@dataclass
class DataSection:
    dataset: str = "synthetic"
    # Further datasets (same root and split) mixed into training, e.g. [refcoco+, refcocog];
    # evaluation uses ``dataset`` only.
    mix: list[str] = field(default_factory=list)
    root: str = MISSING
    split: str = "train"
    eval_split: str = "val"
    eval_limit: int = 64  # expressions scored at each periodic evaluation (0: skip evaluation)
    num_workers: int = 0
    cache_frozen_features: bool = True  # reuse frozen-encoder outputs per image (SAM 2, reasoner vision)
    cache_size: int = 512  # images kept in each feature cache


@dataclass
class StageConfig(TrainConfig):
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    eval_every_steps: int = 0  # 0: evaluate only at the end
