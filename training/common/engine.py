"""One training-engine interface over two backends, so stage loops are written once.

    engine = build_engine(model, model.context.parameters(), cfg.engine, total_steps=cfg.max_steps)
    for batch in loader:
        with engine.autocast():
            loss = compute_loss(engine, batch)
        engine.backward(loss)
        if engine.step():            # True after a real optimizer step (every grad_accum_steps calls)
            ...log engine.lr, engine.grad_norm...

``trainable_params`` is the single source of truth for what learns: ``build_engine`` sets
``requires_grad`` to True on exactly those parameters and to False on every other parameter of
``model``. Loss scaling for gradient accumulation happens inside ``backward``.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.common import distributed
from training.common.schema import EngineConfig

TRAINABLE_WEIGHTS_NAME = "trainable.safetensors"
BACKENDS = ("torch", "deepspeed")
ParamSpec = Iterable[nn.Parameter] | Iterable[dict[str, Any]]
Gather = Callable[[nn.Parameter], contextlib.AbstractContextManager[Any]]


class Engine(ABC):
    """Optimizer, LR schedule, accumulation, clipping, mixed precision and checkpoint I/O of one model."""

    module: nn.Module
    grad_accum_steps: int

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def lr(self) -> float:
        """Learning rate of the first parameter group for the next optimizer step."""

    @property
    @abstractmethod
    def global_step(self) -> int:
        """Optimizer steps taken so far (restored by ``load``)."""

    @property
    @abstractmethod
    def grad_norm(self) -> float | None:
        """Total gradient norm before clipping at the last optimizer step (None before the first)."""

    @property
    @abstractmethod
    def at_accumulation_boundary(self) -> bool:
        """True when no micro-batch gradients are pending, i.e. it is safe to save."""

    @abstractmethod
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Forward through the (possibly wrapped) model."""

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None: ...

    @abstractmethod
    def step(self) -> bool:
        """Finish one micro-batch; every ``grad_accum_steps``-th call clips, steps the optimizer and the
        scheduler and zeroes the gradients. Returns whether that optimizer step happened."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write weights + optimizer + scheduler state into ``directory`` (all ranks must call)."""

    @abstractmethod
    def load(self, directory: Path) -> None:
        """Restore what ``save`` wrote (all ranks must call)."""

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the forward pass; a no-op unless the backend autocasts."""
        return contextlib.nullcontext()

    @property
    def rank(self) -> int:
        return distributed.rank()

    @property
    def world_size(self) -> int:
        return distributed.world_size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _check_boundary(self, action: str) -> None:
        if not self.at_accumulation_boundary:
            raise RuntimeError(f"cannot {action} in the middle of gradient accumulation; call it right after step() returned True")


def build_engine(model: nn.Module, trainable_params: ParamSpec, cfg: EngineConfig, total_steps: int) -> Engine:
    """Wrap ``model`` for training. ``trainable_params``: parameters of ``model`` or optimizer param-group
    dicts (``{"params": [...], "lr": ...}``). ``total_steps`` is the LR schedule length in optimizer steps."""
    if cfg.backend not in BACKENDS:
        raise ValueError(f"engine.backend must be one of {BACKENDS}, got {cfg.backend!r}")
    if cfg.grad_accum_steps < 1 or cfg.micro_batch_size < 1:
        raise ValueError("engine.grad_accum_steps and engine.micro_batch_size must be >= 1")
    groups = select_trainable(model, trainable_params)
    if cfg.backend == "torch":
        from training.common.torch_engine import TorchEngine

        return TorchEngine(model, groups, cfg, total_steps)
    from training.common.deepspeed_engine import DeepSpeedEngine

    return DeepSpeedEngine(model, groups, cfg, total_steps)


def select_trainable(model: nn.Module, trainable_params: ParamSpec) -> list[dict[str, Any]]:
    """Normalise ``trainable_params`` to param groups and make exactly those parameters require grad."""
    items = list(trainable_params)
    if all(isinstance(item, dict) for item in items):
        groups = [{**item, "params": list(item["params"])} for item in items]
    elif not any(isinstance(item, dict) for item in items):
        groups = [{"params": items}]
    else:
        raise TypeError("trainable_params must be all parameters or all param-group dicts, not a mix")
    chosen = {id(p) for group in groups for p in group["params"]}
    if not chosen:
        raise ValueError("no trainable parameters given")
    if chosen - {id(p) for p in model.parameters()}:
        raise ValueError("trainable_params contains tensors that are not parameters of the model")
    for param in model.parameters():
        param.requires_grad_(id(param) in chosen)
    return groups


def trainable_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((name, p) for name, p in model.named_parameters() if p.requires_grad)


def save_trainable(model: nn.Module, path: Path, gather: Gather | None = None) -> None:
    """Save the trainable parameters of ``model`` by name as safetensors (written by rank 0 only).
    ``gather(param)`` is entered around reading each parameter, e.g. ZeRO-3's ``GatheredParameters``,
    one parameter at a time so a sharded model never has to fit on one device at once."""
    tensors: dict[str, torch.Tensor] = {}
    for name, param in trainable_named_parameters(model):
        with gather(param) if gather else contextlib.nullcontext():
            if distributed.is_main():
                tensors[name] = param.detach().to("cpu", copy=True).contiguous()
    if distributed.is_main():
        save_file(tensors, str(path))


def load_trainable(model: nn.Module, path: Path) -> None:
    """Copy the tensors of ``path`` into ``model``'s trainable parameters; the names must match exactly."""
    tensors = load_file(str(path))
    params = dict(trainable_named_parameters(model))
    missing, unexpected = sorted(params.keys() - tensors.keys()), sorted(tensors.keys() - params.keys())
    if missing or unexpected:
        raise KeyError(f"{path}: trainable parameters do not match (missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])

