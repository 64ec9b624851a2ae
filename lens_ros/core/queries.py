"""Queries: validation of the text and the bounded queue in front of the inference worker."""
from __future__ import annotations

import collections
import itertools
import threading
from dataclasses import dataclass
from typing import Any

from lens_model.prompts import clean_query, query_text

DROP_OLDEST = "drop_oldest"
REJECT_NEW = "reject_new"
# What started a query: a query message, or the re-acquisition of a track that was lost or is due.
ASKED, LOST, PERIOD = "query", "lost", "period"


@dataclass(frozen=True)
class Query:
    id: int
    text: str
    received_s: float
    trigger: str = ASKED
    origin_id: int | None = None  # a re-acquisition: the id of the query message it repeats
    epoch: int = 0  # a re-acquisition: the tracking epoch it belongs to (see Tracking)

    @property
    def origin(self) -> int:
        return self.id if self.origin_id is None else self.origin_id

    def lineage(self) -> dict[str, Any]:
        """The QueryOutcome fields that say what started this query."""
        return {"trigger": self.trigger, "origin_query_id": self.origin_id}


def decode_query(data: str | bytes, max_length: int) -> str:
    """The query text, stripped, or InputError for empty, oversized or non-UTF-8 input (the DDS
    transport passes the raw bytes, rclpy a string)."""
    return clean_query(query_text(data).strip(), max_length, collapse_whitespace=False, limit_name="queries.max_length")


def printable_query(data: str | bytes) -> str:
    """Best-effort text of a query for the error result, whatever its encoding."""
    return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data


class QueryIds:
    """Thread-safe sequence of query ids (1, 2, ...) for one node run."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            return next(self._counter)


class QueueClosed(Exception):
    """The queue no longer accepts queries because the node is deactivating."""


class QueryQueue:
    """Bounded FIFO between the query subscription and the worker.

    When full, ``drop_oldest`` evicts the oldest waiting query (a robot usually cares about the
    latest command) and ``reject_new`` refuses the new one. Either way ``put`` returns the query
    that lost its place, so the caller can answer it with an error result.
    """

    def __init__(self, capacity: int, policy: str) -> None:
        if policy not in (DROP_OLDEST, REJECT_NEW):
            raise ValueError(f"unknown queue policy {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self._items: collections.deque[Query] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._woken = False

    def put(self, query: Query) -> Query | None:
        with self._ready:
            if self._closed:
                raise QueueClosed
            loser = None
            if len(self._items) >= self.capacity:
                if self.policy == REJECT_NEW:
                    return query
                loser = self._items.popleft()
            self._items.append(query)
            self._ready.notify()
            return loser

    def get(self, timeout_s: float) -> Query | None:
        """The oldest query, or None after ``timeout_s``, after a ``wake()``, or once the queue is closed and empty."""
        with self._ready:
            self._ready.wait_for(lambda: self._items or self._closed or self._woken, timeout=timeout_s)
            self._woken = False
            return self._items.popleft() if self._items else None

    def wake(self) -> None:
        """Make the current or next ``get`` return at once (a new frame for the track)."""
        with self._ready:
            self._woken = True
            self._ready.notify()

    def close(self) -> list[Query]:
        """Refuse further queries and hand back those still waiting."""
        with self._ready:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._ready.notify_all()
            return left

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)
