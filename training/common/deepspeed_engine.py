"""DeepSpeed backend: ZeRO 0-3, bf16, accumulation and clipping by DeepSpeed, our schedule and checkpoints.

Works under the ``deepspeed`` launcher (one process per GPU, any number of nodes; RANK/LOCAL_RANK/
WORLD_SIZE come from the environment) and as one plain process, CPU included: missing launcher
variables are filled in for a world of one, and the process group uses gloo on CPU, nccl on CUDA.
The optimizer is DeepSpeed's AdamW with ``torch_adam: True`` (torch.optim.AdamW), which needs no
compiled op; override it through ``engine.deepspeed_overrides`` to use FusedAdam or CPU-offload Adam.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from training.common import distributed
from training.common.engine import TRAINABLE_WEIGHTS_NAME, Engine, save_trainable
from training.common.schema import EngineConfig

CHECKPOINT_TAG = "deepspeed"  # sub-directory DeepSpeed writes its shards into


def deepspeed_config(cfg: EngineConfig) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``cfg`` (``deepspeed_overrides`` deep-merged last)."""
    if cfg.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"engine.zero_stage must be 0, 1, 2 or 3, got {cfg.zero_stage}")
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        # Lets save_16bit_model / HF save_pretrained write full weights instead of empty shards.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": cfg.max_grad_norm,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": list(cfg.betas),
                "eps": cfg.adam_eps,
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,
            },
        },
        "bf16": {"enabled": cfg.bf16},
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,  # RunLogger reports progress; silence DeepSpeed's own prints
    }
    overrides = cfg.deepspeed_overrides
    if isinstance(overrides, DictConfig):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    return _deep_merge(config, overrides)


class DeepSpeedEngine(Engine):
    def __init__(self, model: nn.Module, param_groups: list[dict[str, Any]], cfg: EngineConfig, total_steps: int) -> None:
        import deepspeed
        from transformers import get_scheduler

        distributed.set_single_process_env()
        if torch.cuda.is_available():
            torch.cuda.set_device(distributed.local_rank())
        deepspeed.init_distributed(dist_backend=distributed.default_backend())
        self.cfg = cfg
        self.grad_accum_steps = cfg.grad_accum_steps
        self.ds_config = deepspeed_config(cfg)
        schedule = functools.partial(
            get_scheduler, cfg.scheduler, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps
        )
        self._ds, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=param_groups, config=copy.deepcopy(self.ds_config), lr_scheduler=schedule
        )
        self.module = self._ds.module
        self._zero3 = self._ds.zero_optimization_stage() == 3
        if self._zero3:
            # Parameters read outside their owner's forward are gathered around the model's forward.
            for param in getattr(self.module, "externally_read_parameters", list)():
                deepspeed.zero.register_external_parameter(self.module, param)

    @property
    def device(self) -> torch.device:
        return torch.device(self._ds.device)

    @property
    def lr(self) -> float:
        return float(self._ds.get_lr()[0])

    @property
    def global_step(self) -> int:
        return int(self._ds.global_steps)

    @property
    def grad_norm(self) -> float | None:
        norm = self._ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    @property
    def at_accumulation_boundary(self) -> bool:
        return self._ds.micro_steps % self.grad_accum_steps == 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ds(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self._ds.backward(loss)  # DeepSpeed divides by grad_accum_steps itself

    def step(self) -> bool:
        boundary = self._ds.is_gradient_accumulation_boundary()
        self._ds.step()
        return boundary

    def save(self, directory: Path) -> None:
        self._check_boundary("save")
        # Frozen parameters come from the base model the stage rebuilds, so they are not saved again.
        self._ds.save_checkpoint(str(directory), tag=CHECKPOINT_TAG, save_latest=False, exclude_frozen_parameters=True)
        save_trainable(self.module, directory / TRAINABLE_WEIGHTS_NAME, gather=self._gather if self._zero3 else None)

    def load(self, directory: Path) -> None:
        self._check_boundary("load")
        path, _ = self._ds.load_checkpoint(str(directory), tag=CHECKPOINT_TAG, load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {directory / CHECKPOINT_TAG}")

    @staticmethod
    def _gather(param: nn.Parameter) -> Any:
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], modifier_rank=None)


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
