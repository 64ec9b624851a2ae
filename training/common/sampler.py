"""Deterministic, resumable data order for single- and multi-process training.

Each epoch's order is a permutation drawn from ``(seed, epoch)`` alone, so any process can rebuild it.
``position`` counts the samples of that permutation already consumed by all ranks together; rank r
reads positions ``position + r, position + r + world_size, ...``. The training loop calls
``advance`` for what it actually consumed, so DataLoader prefetching never shifts the saved position.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from training.common import distributed


@dataclass
class SamplerState:
    seed: int
    epoch: int
    position: int


class ResumableSampler(Sampler[int]):
    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("ResumableSampler needs at least one sample")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if drop_last and num_samples < self.world_size:
            raise ValueError("drop_last with fewer samples than ranks leaves nothing to read")
        self.epoch = 0
        self.position = 0

    @property
    def epoch_length(self) -> int:
        """Samples per epoch over all ranks: padded (by repeating) or truncated to a multiple of world size."""
        if self.drop_last:
            return self.num_samples - self.num_samples % self.world_size
        return -(-self.num_samples // self.world_size) * self.world_size

    def permutation(self, epoch: int) -> np.ndarray:
        """The global order of ``epoch`` (``epoch_length`` indices)."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        if self.epoch_length > self.num_samples:
            order = np.resize(order, self.epoch_length)  # pads by repeating from the start
        return order[: self.epoch_length]

    def __iter__(self) -> Iterator[int]:
        order = self.permutation(self.epoch)
        return iter(order[self.position + self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        """Samples this rank still reads in the current epoch."""
        return max(0, -(-(self.epoch_length - self.position - self.rank) // self.world_size))

    def advance(self, samples_per_rank: int) -> None:
        """Record that every rank consumed ``samples_per_rank`` more samples of this epoch."""
        self.position = min(self.position + samples_per_rank * self.world_size, self.epoch_length)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning."""
        self.epoch = epoch
        self.position = 0

    def state(self) -> SamplerState:
        return SamplerState(seed=self.seed, epoch=self.epoch, position=self.position)

    def load_state(self, state: SamplerState) -> None:
        if state.seed != self.seed:
            raise ValueError(f"checkpoint data order uses seed {state.seed}, this sampler {self.seed}")
        self.epoch = state.epoch
        self.position = state.position
