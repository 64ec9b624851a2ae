"""The inference thread: takes queries off the queue one at a time, never in a subscription callback.
Between queries it runs ``idle`` (the track steps), so a query and a track step never run at once and
a waiting query always goes first."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lens_ros.core.queries import Query, QueryQueue

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.2  # the longest the worker sleeps between looks at the queue and the track


def nothing_to_do() -> float:
    return IDLE_WAIT_S


class InferenceWorker:
    def __init__(self, queue: QueryQueue, handle: Callable[[Query], None],
                 idle: Callable[[], float] = nothing_to_do) -> None:
        """``idle()`` runs whenever no query waits and returns how long the worker may then sleep
        (a query or ``queue.wake()`` ends the sleep early)."""
        self._queue = queue
        self._handle = handle
        self._idle = idle
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="lens-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> list[Query]:
        """Close the queue, let the running query finish (up to ``timeout_s``), return the unstarted ones."""
        self._stop.set()
        left = self._queue.close()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("inference thread still busy after %.1f s; leaving it to finish on its own", timeout_s)
            self._thread = None
        return left

    def _loop(self) -> None:
        wait = 0.0
        while not self._stop.is_set():
            query = self._queue.get(timeout_s=wait)
            try:
                if query is not None:
                    self._handle(query)
                    wait = 0.0  # look at the queue and the track again at once
                elif not self._stop.is_set():
                    wait = min(IDLE_WAIT_S, max(0.0, self._idle()))
            except Exception:  # the handlers publish their own errors; this only keeps the thread alive
                log.exception("unexpected failure in the inference thread (query %s)",
                              "none" if query is None else query.id)
                wait = IDLE_WAIT_S
