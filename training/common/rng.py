"""Seed, capture and restore every random number generator a training step may touch.

States are stored as plain Python values and tensors so that ``torch.load(weights_only=True)`` can
read them back (numpy's state tuple holds an ndarray, which weights_only refuses, so it is converted).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.common import distributed


def seed_everything(seed: int, per_rank: bool = True) -> int:
    """Seed python, numpy and torch (CPU + all GPUs). With ``per_rank`` each rank gets ``seed + rank``
    so dropout and sampling differ across data-parallel ranks. Returns the seed used."""
    effective = seed + distributed.rank() if per_rank else seed
    random.seed(effective)
    np.random.seed(effective % 2**32)
    torch.manual_seed(effective)  # also seeds every CUDA device
    return effective


def capture_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng_state(path: Path) -> None:
    torch.save(capture_rng_state(), path)


def load_rng_state(path: Path) -> None:
    restore_rng_state(torch.load(path, weights_only=True))

