"""Counting and reporting dataset entries that are skipped because they are broken.

A long training or evaluation run must never die on one bad file. Loaders raise ``BrokenEntry``
for anything wrong with a single entry; the dataset catches it, counts it here under its reason and
moves on. The first occurrence of each reason is logged with its detail, later ones only counted,
and ``report()`` logs one summary line per reason.
"""

from __future__ import annotations

import logging
from collections import Counter

LOGGER = logging.getLogger("training.data")


class BrokenEntry(Exception):
    """One dataset entry cannot be used. ``reason`` is a short, stable key such as "missing image"."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Counts skipped entries by reason for one dataset (or several sharing the counter)."""

    def __init__(self, name: str = "data") -> None:
        self.name = name
        self._counts: Counter[str] = Counter()

    def skip(self, reason: str, detail: str = "") -> None:
        self._counts[reason] += 1
        if self._counts[reason] == 1:
            LOGGER.warning(
                "%s: skipping broken entry (%s)%s; further ones are only counted",
                self.name,
                reason,
                f": {detail}" if detail else "",
            )

    def skip_error(self, error: BrokenEntry, context: str = "") -> None:
        detail = f"{context}: {error.detail}" if context and error.detail else context or error.detail
        self.skip(error.reason, detail)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def summary(self) -> str:
        if not self._counts:
            return f"{self.name}: no entries skipped"
        reasons = ", ".join(f"{reason} x{count}" for reason, count in sorted(self._counts.items()))
        return f"{self.name}: skipped {self.total} entries ({reasons})"

    def report(self) -> None:
        """Log the summary, if anything was skipped."""
        if self._counts:
            LOGGER.warning(self.summary())
