"""The inference thread: takes queries off the queue one at a time, never in a subscription callback."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lens_ros.core.queries import Query, QueryQueue

log = logging.getLogger(__name__)


class InferenceWorker:
    def __init__(self, queue: QueryQueue, handle: Callable[[Query], None]) -> None:
        self._queue = queue
        self._handle = handle
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
        while not self._stop.is_set():
            query = self._queue.get(timeout_s=0.2)
            if query is None:
                continue
            try:
                self._handle(query)
            except Exception:  # the handler publishes its own errors; this only keeps the thread alive
                log.exception("unexpected failure while handling query %d", query.id)
