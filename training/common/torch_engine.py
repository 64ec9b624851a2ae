"""Single-process backend: torch AdamW, a transformers LR schedule, accumulation, clipping, bf16 autocast."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.common.engine import TRAINABLE_WEIGHTS_NAME, Engine, load_trainable, save_trainable
from training.common.schema import EngineConfig

OPTIMIZER_STATE_NAME = "optimizer.pt"


class TorchEngine(Engine):
    def __init__(self, model: nn.Module, param_groups: list[dict[str, Any]], cfg: EngineConfig, total_steps: int) -> None:
        from transformers import get_scheduler  # heavy import, only needed here

        self.cfg = cfg
        self.grad_accum_steps = cfg.grad_accum_steps
        self._device = _resolve_device(cfg.device)
        self.module = model.to(self._device)
        self._params = [p for group in param_groups for p in group["params"]]
        self.optimizer = torch.optim.AdamW(
            param_groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        self.scheduler = get_scheduler(
            cfg.scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps
        )
        self._micro_steps = 0
        self._global_step = 0
        self._grad_norm: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    @property
    def global_step(self) -> int:
        return self._global_step

    @property
    def grad_norm(self) -> float | None:
        return None if self._grad_norm is None else float(self._grad_norm)

    @property
    def at_accumulation_boundary(self) -> bool:
        return self._micro_steps % self.grad_accum_steps == 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.cfg.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device.type, dtype=torch.bfloat16)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum_steps).backward()

    def step(self) -> bool:
        self._micro_steps += 1
        if not self.at_accumulation_boundary:
            return False
        # Always measure the norm (inf max_norm = measure only) so logs look the same with clipping off.
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        self._grad_norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._global_step += 1
        return True

    def save(self, directory: Path) -> None:
        self._check_boundary("save")
        save_trainable(self.module, directory / TRAINABLE_WEIGHTS_NAME)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "global_step": self._global_step,
        }
        torch.save(state, directory / OPTIMIZER_STATE_NAME)

    def load(self, directory: Path) -> None:
        self._check_boundary("load")
        load_trainable(self.module, directory / TRAINABLE_WEIGHTS_NAME)
        state = torch.load(directory / OPTIMIZER_STATE_NAME, map_location=self._device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._global_step = int(state["global_step"])


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
