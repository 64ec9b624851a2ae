"""Wall-clock milliseconds per named stage, for the predictor's and the tracker's ``timings_ms``."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch


class StageTimer:
    """Wall-clock milliseconds per named stage (synchronising CUDA so GPU time is attributed)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0

    def with_total(self) -> dict[str, float]:
        return {**self.ms, "total": sum(self.ms.values())}
