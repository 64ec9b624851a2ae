"""LensService: everything the node does, minus the middleware.

A transport feeds it image messages and query strings from its subscription callbacks and gives
it a sink that publishes messages; the service never blocks those callbacks on inference.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from lens_model.errors import InputError
from lens_ros.core import messages
from lens_ros.core.frames import Frame, LatestFrameBuffer, Stamp
from lens_ros.core.outcome import QueryOutcome
from lens_ros.core.params import LensParams
from lens_ros.core.publishing import OutcomePublisher, Output, RateLimiter, Sink
from lens_ros.core.queries import Query, QueryIds, QueryQueue, QueueClosed, decode_query, printable_query
from lens_ros.core.runner import QueryRunner, RunSettings
from lens_ros.core.segmenter import Segmenter, load_segmenter, release_accelerator_memory
from lens_ros.core.stats import NodeState, NodeStats, diagnostic_report
from lens_ros.core.worker import InferenceWorker

log = logging.getLogger(__name__)

Loader = Callable[[str, str, str], Segmenter]
NOT_ACTIVE = "node is not active (no model loaded)"
# At shutdown: how long a running query may finish before it gets its error result, and how long the
# result topic may then wait for subscribers' acknowledgements (both transports).
SHUTDOWN_GRACE_S = 2.0
RESULT_FLUSH_S = 0.5
ECHOED_QUERY_CHARS = 200  # a rejected query is echoed in its error result up to this length


class LensService:
    """Lifecycle: ``activate()`` loads the model and starts the worker, ``deactivate()`` answers the
    queries still waiting with errors, stops the worker and frees the model.

    With ``synchronous=True`` (bag mode) there is no worker: each query runs inside ``on_query``.
    ``ids`` lets a transport keep one query id sequence across services (rclpy: cleanup + configure).
    """

    def __init__(
        self,
        params: LensParams,
        kit: Any,
        sink: Sink,
        clock: Callable[[], float],
        *,
        image_source: str,
        diagnostics_name: str = "lens_node: segmentation",
        load: Loader = load_segmenter,
        synchronous: bool = False,
        ids: QueryIds | None = None,
    ) -> None:
        self.params = params
        self.frames = LatestFrameBuffer()
        self.stats = NodeStats()
        self._kit = kit
        self._sink = sink
        self._clock = clock
        self._image_source = image_source
        self._diagnostics_name = diagnostics_name
        self._load = load
        self._synchronous = synchronous
        self._ids = ids or QueryIds()
        debug_limiter = RateLimiter(params.debug_image_max_rate_hz, clock) if params.debug_image else None
        self._publisher = OutcomePublisher(kit, sink, debug_limiter)
        self._state_lock = threading.Lock()
        self._runner: QueryRunner | None = None
        self._running: Query | None = None  # the query the worker is running, until it has its result
        self.activation_error: str | None = None  # why the last activate() failed, for the diagnostics
        self._model_info: dict[str, Any] = {}
        self._queue = QueryQueue(params.queue_size, params.queue_full_policy)
        self._worker: InferenceWorker | None = None

    @property
    def active(self) -> bool:
        return self._runner is not None

    def activate(self) -> None:
        p = self.params
        log.info("loading model %s on %s (dtype %s)", p.model_name, p.device, p.dtype)
        try:
            segmenter = self._load(p.model_name, p.device, p.dtype)
        except Exception as exc:
            self.activation_error = f"activate failed: cannot load model {p.model_name}: {type(exc).__name__}: {exc}"
            raise
        self.activation_error = None
        self._model_info = dict(segmenter.describe())
        if self._model_info.get("random_weights"):
            log.warning("model %s has random weights: its masks and boxes are meaningless", p.model_name)
        settings = RunSettings(
            max_frame_age_s=p.max_frame_age_s,
            max_frame_future_s=p.max_frame_future_s,
            template=None if p.template == "auto" else p.template,
            max_new_tokens=p.max_new_tokens or None,
            image_source=self._image_source,
        )
        runner = QueryRunner(segmenter, self.frames, settings, self._clock)
        if not self._synchronous:
            self._queue = QueryQueue(p.queue_size, p.queue_full_policy)
            self._worker = InferenceWorker(self._queue, self._run)
            self._worker.start()
        with self._state_lock:
            self._runner = runner

    def deactivate(self, timeout_s: float = 30.0, free_memory: bool = True) -> int:
        """Stop serving; return how many queries got an error result because of it. A query still
        running after ``timeout_s`` gets its error result now; the result it may produce later is
        dropped, so it still gets exactly one. ``free_memory=False`` skips the garbage collection
        (0.5 s with torch loaded) when the process is about to end."""
        left = self._worker.stop(timeout_s) if self._worker is not None else []
        self._worker = None
        for query in left:
            self._fail(query, "node deactivated before this query ran")
        with self._state_lock:
            self._runner = None
            abandoned, self._running = self._running, None
        if abandoned is not None:
            self._fail(abandoned, f"node deactivated or shut down while this query ran (waited {timeout_s:g} s)")
        self._model_info = {}
        if free_memory:
            release_accelerator_memory()
        return len(left) + (abandoned is not None)

    def on_image(self, msg: Any) -> None:
        self.frames.put(Frame.from_msg(msg, compressed=False, received_s=self._clock()))

    def on_compressed_image(self, msg: Any) -> None:
        self.frames.put(Frame.from_msg(msg, compressed=True, received_s=self._clock()))

    def on_query(self, data: str | bytes) -> None:
        """Accept one query; it gets exactly one result, now (if rejected) or from the worker."""
        query_id = self._ids.next()
        received = self._clock()
        self.stats.query_received()
        try:
            query = Query(query_id, decode_query(data, self.params.max_query_length), received)
        except InputError as exc:
            text, message = printable_query(data), str(exc)
            if len(text) > ECHOED_QUERY_CHARS:  # never echo a 100 kB query back in full
                text = text[:ECHOED_QUERY_CHARS] + "..."
                message += f" (the result's query field holds its first {ECHOED_QUERY_CHARS} characters)"
            self._fail(Query(query_id, text, received), message)
            return
        if self._synchronous:
            self._run(query)
        elif not self.active:
            self._fail(query, NOT_ACTIVE)
        else:
            self._enqueue(query)

    def _enqueue(self, query: Query) -> None:
        try:
            loser = self._queue.put(query)
        except QueueClosed:
            self._fail(query, "node is deactivating; query not run")
            return
        if loser is not None:
            self.stats.query_evicted()
            p = self.params
            self._fail(loser, f"query queue full (queries.queue_size = {p.queue_size}, queries.full_policy = "
                              f"{p.queue_full_policy}); query dropped without running")

    def _run(self, query: Query) -> None:
        with self._state_lock:
            runner = self._runner
            self._running = query if runner is not None else None
        if runner is None:
            self._fail(query, NOT_ACTIVE)
            return
        output = runner.run(query)
        with self._state_lock:
            if self._running is not query:  # deactivate() gave up on it and already answered it
                log.info("query %d finished after it was abandoned; its result is dropped", query.id)
                return
            self._running = None
        self._finish(output.outcome, output.rgb, query)

    def _fail(self, query: Query, message: str) -> None:
        self._finish(QueryOutcome.failure(query.id, query.text, message), None, query)

    def _finish(self, outcome: QueryOutcome, rgb: Any, query: Query) -> None:
        published = self._publisher.publish(outcome, rgb)
        latency_ms = max(0.0, self._clock() - query.received_s) * 1000.0
        self.stats.result_published(published.status, published.error, latency_ms)
        log.info("query %d %r -> %s%s", published.query_id, published.query[:80], published.status,
                 f": {published.error}" if published.error else "")

    def publish_diagnostics(self) -> None:
        now = self._clock()
        newest = self.frames.peek()
        state = NodeState(
            active=self.active,
            model=self._model_info,
            image_source=self._image_source,
            frames_received=self.frames.received,
            frames_dropped=self.frames.replaced_unused,
            newest_frame_age_s=None if newest is None else now - newest.stamp.seconds,
            max_frame_age_s=self.params.max_frame_age_s,
            queue_length=len(self._queue),
            failure=self.activation_error,
        )
        report = diagnostic_report(self._diagnostics_name, self.stats, state)
        self._sink(Output.DIAGNOSTICS, messages.diagnostics(self._kit, Stamp.from_seconds(now), report))
