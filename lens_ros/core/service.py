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
from lens_ros.core.publishing import OutcomePublisher, Output, RateLimiter, Sink, TrackPublisher
from lens_ros.core.queries import Query, QueryIds, QueryQueue, QueueClosed, decode_query, printable_query
from lens_ros.core.runner import QueryRunner, RunSettings
from lens_ros.core.segmenter import Segmenter, TrackerOpener, load_segmenter, open_tracker, release_accelerator_memory
from lens_ros.core.stats import NodeState, NodeStats, diagnostic_report
from lens_ros.core.tracking import TrackerPool, Tracking
from lens_ros.core.worker import IDLE_WAIT_S, InferenceWorker

log = logging.getLogger(__name__)

Loader = Callable[[str, str, str], Segmenter]
NOT_ACTIVE = "node is not active (no model loaded)"
# At shutdown: how long a running query may finish before it gets its error result, and how long the
# result topic may then wait for subscribers' acknowledgements (both transports).
SHUTDOWN_GRACE_S = 2.0
RESULT_FLUSH_S = 0.5
ECHOED_QUERY_CHARS = 200  # a rejected query is echoed in its error result up to this length


class LensService:
    """Lifecycle: ``activate()`` loads the model (and its tracker) and starts the worker, ``deactivate()``
    answers the queries still waiting with errors, stops the worker and the track and frees the model.

    With ``synchronous=True`` (bag mode) there is no worker: each query runs inside ``on_query`` and
    each track step inside ``on_image``, on every frame. ``ids`` lets a transport keep one query id
    sequence across services (rclpy: cleanup + configure).
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
        track: TrackerOpener = open_tracker,
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
        self._open_tracker = track
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
        self._tracking: Tracking | None = None

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
        tracking = None
        if p.tracking:
            try:
                tracker = self._open_tracker(segmenter, p)
            except Exception as exc:
                self.activation_error = (f"activate failed: cannot open a {p.track_mode} tracker: "
                                         f"{type(exc).__name__}: {exc}")
                raise
            trackers = TrackerPool(tracker, lambda: self._open_tracker(segmenter, p))
            tracking = Tracking(trackers, p, self.frames, TrackPublisher(self._kit, self._sink), self.stats,
                                self._clock, self._ids.next, rate_limited=not self._synchronous)
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
        with self._state_lock:
            self._runner, self._tracking = runner, tracking
        if not self._synchronous:
            self._queue = QueryQueue(p.queue_size, p.queue_full_policy)
            self._worker = InferenceWorker(self._queue, self._run, self._track)
            self._worker.start()

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
            tracking, self._tracking = self._tracking, None
        if abandoned is not None:
            self._fail(abandoned, f"node deactivated or shut down while this query ran (waited {timeout_s:g} s)")
        if tracking is not None:
            tracking.stop("node deactivated")
        self._model_info = {}
        if free_memory:
            release_accelerator_memory()
        return len(left) + (abandoned is not None)

    def on_image(self, msg: Any) -> None:
        self._on_frame(Frame.from_msg(msg, compressed=False, received_s=self._clock()))

    def on_compressed_image(self, msg: Any) -> None:
        self._on_frame(Frame.from_msg(msg, compressed=True, received_s=self._clock()))

    def _on_frame(self, frame: Frame) -> None:
        self.frames.put(frame)
        tracking = self._tracking
        if tracking is None or tracking.track is None:
            return
        if self._synchronous:
            self._track()
        else:
            self._queue.wake()  # the worker steps on it unless a query waits

    def stop_tracking(self, reason: str) -> str:
        """End the current track and cancel its re-acquisitions (a stop request); returns what happened."""
        tracking = self._tracking
        if tracking is None:
            return "tracking is off (tracking.enabled: false)" if not self.params.tracking else NOT_ACTIVE
        message = tracking.stop(reason)
        if not self._synchronous:
            self._queue.wake()  # the worker frees the tracker's state
        log.info("%s (%s)", message, reason)
        return message

    def _track(self) -> float:
        """One track step if one is due (worker idle time, or each frame in synchronous mode); returns how
        long the worker may sleep. A re-acquisition it asks for is a query like any other."""
        tracking = self._tracking
        if tracking is None:
            return IDLE_WAIT_S
        wait, reacquisition = tracking.step()
        if reacquisition is not None:
            log.info("re-acquiring the target of query %d (%s) with query %d", reacquisition.origin,
                     reacquisition.trigger, reacquisition.id)
            if self._synchronous:
                self._run(reacquisition)
            else:
                self._enqueue(reacquisition)
        return wait

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
            runner, tracking = self._runner, self._tracking
            cancelled = tracking is not None and not tracking.wants(query)
            self._running = query if runner is not None and not cancelled else None
        if runner is None:
            self._fail(query, NOT_ACTIVE)
            return
        if cancelled:
            self._fail(query, f"re-acquisition of query {query.origin} cancelled: its track was stopped or "
                              "replaced before this query ran")
            return
        output = runner.run(query)
        with self._state_lock:
            if self._running is not query:  # deactivate() gave up on it and already answered it
                log.info("query %d finished after it was abandoned; its result is dropped", query.id)
                return
            self._running = None
        self._finish(output.outcome, output.rgb, query)
        if tracking is not None:
            tracking.after_query(query, output.outcome, output.rgb)

    def _fail(self, query: Query, message: str) -> None:
        self._finish(QueryOutcome.failure(query.id, query.text, message, **query.lineage()), None, query)

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
            **self._track_state(),
            now_s=now,
        )
        report = diagnostic_report(self._diagnostics_name, self.stats, state)
        self._sink(Output.DIAGNOSTICS, messages.diagnostics(self._kit, Stamp.from_seconds(now), report))

    def _track_state(self) -> dict[str, Any]:
        tracking = self._tracking
        track = None if tracking is None else tracking.track
        if track is not None:
            return {"track_state": "tracking", "track_query_id": track.query.id}
        return {"track_state": "off" if tracking is None else "idle"}
