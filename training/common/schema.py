"""Structured config sections shared by every training stage.

A stage declares its own dataclass that inherits ``TrainConfig`` and adds its sections (data, model,
rewards, ...). ``training.common.config`` merges YAML and CLI overrides onto it, so a misspelt key
or a wrong type fails before any training starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class EngineConfig:
    backend: str = "torch"  # "torch" (one process) or "deepspeed"
    device: str = "auto"  # torch backend only: "auto", "cpu", "cuda", "cuda:1"; DeepSpeed uses LOCAL_RANK
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    scheduler: str = "cosine"  # any name transformers.get_scheduler knows: cosine, linear, constant, ...
    warmup_steps: int = 0
    micro_batch_size: int = 1  # samples per process per forward/backward
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0  # 0 disables clipping
    bf16: bool = False
    zero_stage: int = 2  # deepspeed only: 0, 1, 2 or 3
    # Deep-merged last onto the generated DeepSpeed config, e.g. {zero_optimization: {offload_optimizer: {device: cpu}}}.
    deepspeed_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    every_steps: int = 500  # 0: only the final checkpoint
    keep_last: int = 3  # 0 keeps all
    resume: str = "auto"  # "auto" (latest under output_dir if any), "never", or a checkpoint directory


@dataclass
class LogConfig:
    every_steps: int = 10  # metrics are averaged over this window before they are written
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class TrainConfig:
    output_dir: str = MISSING
    seed: int = 42
    max_steps: int = MISSING  # optimizer steps
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
