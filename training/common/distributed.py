"""Process-group helpers that also work in a plain single process (no process group).

Ranks come from the environment the ``deepspeed`` / ``torchrun`` launchers set: RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT. Every helper degrades to the obvious single-process result when
``torch.distributed`` is not initialised, so stage code calls them unconditionally.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int


def launcher_env() -> DistEnv:
    """What the launcher put in the environment (0/0/1 when there is no launcher)."""
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def set_single_process_env() -> None:
    """Fill in the launcher variables for a one-process group when no launcher set them."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else launcher_env().rank


def local_rank() -> int:
    return launcher_env().local_rank


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: T, src: int = 0) -> T:
    """``src``'s ``obj`` on every rank; use it to give all ranks the same rollouts or the same seed."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast of ``tensor`` from ``src``; returns it for chaining."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor
