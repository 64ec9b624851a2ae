"""The shared shape of every loader: targets indexed up front, samples decoded on access.

A ``Target`` is one annotated object in one image with all the expressions that describe it (a
RefCOCO ref, a ReasonSeg image, a JSONL line). Indexing only reads annotation files; images and
masks are decoded when a sample is requested. A target that turns out to be broken is counted in the
dataset's ``SkipCounter`` and yields ``None`` from ``__getitem__`` (iteration just skips it), so a
long run never stops on one bad file.
"""

from __future__ import annotations

import abc
import bisect
import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from lens_model.result import Box
from training.data.sample import InstanceTarget, Sample
from training.data.skips import BrokenEntry, SkipCounter

Per = Literal["sentence", "ref"]
Annotation = TypeVar("Annotation")


@dataclass(frozen=True)
class Query:
    """One referring expression for a target."""

    text: str
    sample_id: str
    reasoning: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target(Generic[Annotation]):
    """One annotated target (an object, or several, or none); ``annotation`` is whatever the
    dataset's ``decode`` needs; ``referents`` is how many objects the expressions name."""

    image_path: Path
    image_id: str
    ref_id: str
    queries: tuple[Query, ...]
    annotation: Annotation
    meta: Mapping[str, Any] = field(default_factory=dict)
    referents: int = 1


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray
    mask: np.ndarray
    box: Box
    ignore: np.ndarray | None = None
    instances: tuple[InstanceTarget, ...] | None = None  # None: one referent, (box, mask)


class TargetDataset(abc.ABC, Generic[Annotation]):
    """A map-style dataset of ``Sample``s; subclasses index targets and implement ``decode``.

    ``per="sentence"`` gives one sample per expression (the evaluation convention);
    ``per="ref"`` one per target with an expression drawn by ``rng`` (default: the ``random`` module,
    which torch's DataLoader seeds differently in each worker).
    """

    def __init__(
        self,
        targets: Sequence[Target[Annotation]],
        *,
        source: str,
        per: Per = "sentence",
        skips: SkipCounter,
        rng: random.Random | None = None,
    ) -> None:
        if per not in ("sentence", "ref"):
            raise ValueError(f"per must be 'sentence' or 'ref', got {per!r}")
        self.targets = list(targets)
        self.source = source
        self.per = per
        self.skips = skips
        self._rng = rng
        self._ends = list(itertools.accumulate(len(t.queries) for t in self.targets))
        self._cache: tuple[int, Decoded | BrokenEntry] | None = None
        skips.report()

    @abc.abstractmethod
    def decode(self, target: Target[Annotation]) -> Decoded:
        """Read the image and build the mask; raise ``BrokenEntry`` for anything wrong."""

    def __len__(self) -> int:
        if self.per == "ref":
            return len(self.targets)
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: int) -> Sample | None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        if self.per == "ref":
            target_index = index
            # The module is looked up per call so that each DataLoader worker uses its own seeded state.
            rng = self._rng if self._rng is not None else random
            query_index = rng.randrange(len(self.targets[index].queries))
        else:
            target_index = bisect.bisect_right(self._ends, index)
            query_index = index - (self._ends[target_index - 1] if target_index else 0)
        target = self.targets[target_index]
        decoded = self._decode_cached(target_index)
        if isinstance(decoded, BrokenEntry):
            self.skips.skip_error(decoded, f"{self.source} {target.ref_id}")
            return None
        query = target.queries[query_index]
        return Sample(
            image=decoded.image.copy(),
            text=query.text,
            mask=decoded.mask.copy(),
            box=decoded.box,
            image_id=target.image_id,
            ref_id=target.ref_id,
            sample_id=query.sample_id,
            source=self.source,
            ignore=None if decoded.ignore is None else decoded.ignore.copy(),
            reasoning=query.reasoning,
            meta={**target.meta, **query.meta},
            instances=None if decoded.instances is None else tuple((box, m.copy()) for box, m in decoded.instances),
        )

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            sample = self[index]
            if sample is not None:
                yield sample
        self.skips.report()

    def _decode_cached(self, target_index: int) -> Decoded | BrokenEntry:
        # Consecutive sentences of one target share the decode (sequential evaluation).
        if self._cache is None or self._cache[0] != target_index:
            try:
                result: Decoded | BrokenEntry = self.decode(self.targets[target_index])
            except BrokenEntry as error:
                result = error
            self._cache = (target_index, result)
        return self._cache[1]
