"""The track between queries: a query that found its target seeds it, then each new frame gets a step.

All tracker calls run on one thread (the inference worker, or the caller in synchronous bag mode), so
a step never runs beside a query. ``stop`` may come from any thread: it ends the track under the lock,
and a step that was running then publishes nothing, so no output of a track follows its ``stopped``.

Each re-acquisition is a query of its own (trigger ``lost`` or ``period``) that carries the *epoch* it
was started in. A stop and every query message start a new epoch, so a re-acquisition that is still
waiting or running then neither runs nor restarts the track they ended.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lens_model.errors import InputError
from lens_ros.core.frames import Frame, LatestFrameBuffer
from lens_ros.core.outcome import ERROR, LOST, OK, STOPPED, TRACKING, QueryOutcome, TrackEvent
from lens_ros.core.params import LensParams
from lens_ros.core.publishing import TrackPublisher
from lens_ros.core.queries import ASKED, PERIOD, Query
from lens_ros.core.queries import LOST as LOST_TRIGGER
from lens_ros.core.runner import decode_frame
from lens_ros.core.segmenter import Tracker, is_out_of_memory, release_accelerator_memory
from lens_ros.core.stats import NodeStats
from lens_ros.core.worker import IDLE_WAIT_S

log = logging.getLogger(__name__)


@dataclass
class Track:
    query: Query  # the query whose mask seeded it
    label: str  # class_id of its detections: the query's grounded label, else its text
    last_seq: int  # the newest frame it ran on or was seeded from (Frame.seq)
    seeded_s: float


@dataclass
class StepOutput:
    event: TrackEvent
    mask: np.ndarray | None = None  # for ``tracking`` events
    ended: str | None = None  # why the track ends after this frame (published as ``stopped`` unless lost)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


class Tracking:
    def __init__(self, tracker: Tracker, params: LensParams, frames: LatestFrameBuffer, publisher: TrackPublisher,
                 stats: NodeStats, clock: Callable[[], float], new_id: Callable[[], int], *,
                 rate_limited: bool) -> None:
        """``rate_limited``: at most ``tracking.max_rate_hz`` steps (the live node); False steps on every
        frame (bag mode, where nothing waits)."""
        self._tracker = tracker
        self._params = params
        self._frames = frames
        self._publisher = publisher
        self._stats = stats
        self._clock = clock
        self._new_id = new_id
        self._min_period_s = 1.0 / params.track_max_rate_hz if rate_limited else 0.0
        self._lock = threading.Lock()
        self._track: Track | None = None
        self._epoch = 0
        self._last_step_s: float | None = None

    @property
    def track(self) -> Track | None:
        return self._track

    def wants(self, query: Query) -> bool:
        """False for a re-acquisition whose track was stopped or replaced since it was started."""
        return query.trigger == ASKED or query.epoch == self._epoch

    def after_query(self, query: Query, outcome: QueryOutcome, rgb: np.ndarray | None) -> None:
        """A query ran and its result is out: its first instance's mask seeds the track, replacing the one
        before (one tracker follows one object: the one the result's box and label describe); a query that
        found nothing ends the track. A query message always does one or the other."""
        with self._lock:
            if not self.wants(query):
                return
            if query.trigger == ASKED:
                self._epoch += 1
            epoch = self._epoch
        result = outcome.result
        if (outcome.status != OK or result is None or rgb is None or outcome.frame is None
                or not result.instances[0].mask.any()):
            why = outcome.error or (result.box_status if result is not None else "no mask")
            self._end(f"query {query.id} found nothing to track ({outcome.status}: {why})", epoch)
            return
        try:
            self._tracker.start(rgb, result.instances[0].mask)
        except Exception as exc:  # InputError or a model failure: the query's own result is out already
            self._recover(exc)
            self._end(f"cannot start a track from query {query.id}: {type(exc).__name__}: {exc}", epoch)
            return
        with self._lock:
            if self._epoch == epoch:  # not stopped while the tracker started
                self._track = Track(query, result.label or query.text, outcome.frame.seq, self._clock())

    def stop(self, reason: str) -> str:
        """End the track (any thread) and cancel its re-acquisitions; returns what happened, for the caller."""
        with self._lock:
            self._epoch += 1
            track, self._track = self._track, None
            if track is not None:
                self._publisher.publish(self._stopped(track, reason))
        return "no track was running" if track is None else f"stopped the track of query {track.query.id}"

    def step(self) -> tuple[float, Query | None]:
        """One track step on the newest frame, if there is a track, a frame it has not run on, and the rate
        allows. Returns how long the caller may wait before the next call, and a re-acquisition query to run."""
        with self._lock:  # a re-acquisition belongs to this epoch: a stop from now on cancels it
            track, epoch = self._track, self._epoch
        if track is None:
            if self._tracker.active:  # ended by a stop or a failed query: free the tracker's state here
                self._tracker.stop()
            return IDLE_WAIT_S, None
        now = self._clock()
        period = self._params.reacquire_period_s
        # Due again only after this query ran: the worker runs a waiting query before the next step, and
        # the query replaces or ends this track.
        if period > 0 and now - track.seeded_s >= period:
            return 0.0, self._reacquire(track, PERIOD, now, epoch)
        if self._last_step_s is not None and 0 <= now - self._last_step_s < self._min_period_s:
            return self._last_step_s + self._min_period_s - now, None
        frame = self._frames.take_newer(track.last_seq)
        if frame is None:
            return IDLE_WAIT_S, None
        self._last_step_s = now
        output = self._step_on(track, frame)
        with self._lock:
            if self._track is not track:  # stopped while the step ran
                return 0.0, None
            track.last_seq = frame.seq
            event = output.event
            self._publisher.publish(event, output.mask, track.label)
            self._stats.track_frame(event.status, event.frames_dropped, now, event.timings_ms.get("node_total"))
            if output.ended is None:
                return 0.0, None
            self._track = None
            if event.status != LOST:
                self._publisher.publish(self._stopped(track, output.ended))
        if event.status == LOST and self._params.reacquire_on_lost:
            return 0.0, self._reacquire(track, LOST_TRIGGER, now, epoch)
        return 0.0, None

    def _step_on(self, track: Track, frame: Frame) -> StepOutput:
        started = time.perf_counter()
        query = track.query
        event = TrackEvent(query.id, query.origin, query.text, ERROR, frame=frame,
                           frames_dropped=max(0, frame.seq - track.last_seq - 1))
        try:
            rgb = decode_frame(frame)
        except InputError as exc:
            event.error = f"bad image: {exc}"
            return StepOutput(event)
        except Exception as exc:  # an OpenCV failure on a hostile image must not end the track
            event.error = f"cannot decode image: {type(exc).__name__}: {exc}"
            return StepOutput(event)
        decoded = time.perf_counter()
        try:
            step = self._tracker.step(rgb)
        except InputError as exc:  # the tracker kept its state: the track goes on with the next frame
            event.error = f"tracker rejected the frame: {exc}"
            return StepOutput(event)
        except Exception as exc:
            self._recover(exc)
            event.error = f"tracker failed: {type(exc).__name__}: {exc}"
            return StepOutput(event, ended=f"the tracker failed on a frame: {type(exc).__name__}")
        event.timings_ms = {"decode": _ms(decoded - started), **step.timings_ms,
                            "node_total": _ms(time.perf_counter() - started)}
        if step.mask.shape != rgb.shape[:2]:
            event.error = f"tracker returned a {step.mask.shape} mask for a {rgb.shape[:2]} frame"
            return StepOutput(event)
        event.score, event.box = float(step.score), step.box
        if step.lost:
            event.status, event.reason = LOST, f"the tracker lost the target (score {step.score:.3f})"
            return StepOutput(event, ended=event.reason)
        event.status, event.mask_area = TRACKING, int(step.mask.sum())
        return StepOutput(event, step.mask)

    def _reacquire(self, track: Track, trigger: str, now: float, epoch: int) -> Query:
        self._stats.track_reacquired()
        return Query(self._new_id(), track.query.text, now, trigger, track.query.origin, epoch)

    def _end(self, reason: str, epoch: int) -> None:
        """End the current track (if any, and unless a stop came first), publishing why."""
        with self._lock:
            if self._epoch != epoch:
                return
            track, self._track = self._track, None
            if track is not None:
                self._publisher.publish(self._stopped(track, reason))

    @staticmethod
    def _stopped(track: Track, reason: str) -> TrackEvent:
        return TrackEvent(track.query.id, track.query.origin, track.query.text, STOPPED, reason=reason)

    @staticmethod
    def _recover(exc: BaseException) -> None:
        if is_out_of_memory(exc):
            release_accelerator_memory()
        else:
            log.error("tracker failed: %s: %s", type(exc).__name__, exc)
