"""The track between queries: a query that found its target seeds it, then each new frame gets a step.

Every instance of the query gets a tracker of its own (``lens_model.instance_tracks``), seeded with its own
mask; the trackers come from a pool that keeps them between queries (opening one may load weights). A
frame is ``lost`` when no instance is tracked on it and one was lost on it; it publishes no mask, and the
track goes on: each tracker keeps searching where its target was heading, and the track is ``tracking``
again on the first frame where one finds its target. With ``tracking.reacquire_on_lost`` a lost frame
also starts a re-acquisition, which replaces or ends the track.

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

from lens_model.answer_parser import MAX_INSTANCES
from lens_model.errors import InputError
from lens_model.instance_tracks import FrameSummary, InstanceTracks
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
    query: Query  # the query whose instances seeded it
    labels: list[str]  # class_id of each instance's detections: its grounded label, else the query's text
    instances: InstanceTracks
    last_seq: int  # the newest frame it ran on or was seeded from (Frame.seq)
    seeded_s: float


@dataclass
class StepOutput:
    event: TrackEvent
    ended: str | None = None  # why the track ends after this frame (published as ``stopped``)


class TrackerPool:
    """The trackers of the instances of a track: ``first`` (opened when the node activates, so that an
    unusable tracker fails activation) and more opened as queries with more instances need them, kept for
    later queries; at most ``MAX_INSTANCES``, as many as an answer holds instances."""

    def __init__(self, first: Tracker, open_more: Callable[[], Tracker]) -> None:
        self._trackers = [first]
        self._open_more = open_more

    @property
    def active(self) -> bool:
        return any(tracker.active for tracker in self._trackers)

    def take(self, count: int) -> Callable[[], Tracker]:
        """Hands out up to ``count`` trackers, one a call (for ``InstanceTracks``); the others are stopped."""
        if count > MAX_INSTANCES:
            raise ValueError(f"{count} instances, more than the {MAX_INSTANCES} an answer holds")
        while len(self._trackers) < count:
            self._trackers.append(self._open_more())
        for tracker in self._trackers[count:]:
            if tracker.active:
                tracker.stop()
        return iter(self._trackers[:count]).__next__

    def stop(self) -> None:
        for tracker in self._trackers:
            if tracker.active:
                tracker.stop()


def _ms(seconds: float) -> float:
    return seconds * 1000.0


class Tracking:
    def __init__(self, trackers: TrackerPool, params: LensParams, frames: LatestFrameBuffer,
                 publisher: TrackPublisher, stats: NodeStats, clock: Callable[[], float], new_id: Callable[[], int], *,
                 rate_limited: bool) -> None:
        """``rate_limited``: at most ``tracking.max_rate_hz`` steps (the live node); False steps on every
        frame (bag mode, where nothing waits)."""
        self._trackers = trackers
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
        """A query ran and its result is out: its instances' masks seed the track, replacing the one before;
        a query that found nothing ends the track. A query message always does one or the other."""
        with self._lock:
            if not self.wants(query):
                return
            if query.trigger == ASKED:
                self._epoch += 1
            epoch = self._epoch
        result = outcome.result
        if (outcome.status != OK or result is None or rgb is None or outcome.frame is None
                or not any(instance.mask.any() for instance in result.instances)):
            why = outcome.error or (result.box_status if result is not None else "no mask")
            self._end(f"query {query.id} found nothing to track ({outcome.status}: {why})", epoch)
            return
        try:
            instances = InstanceTracks(self._trackers.take(len(result.instances)), rgb, result.instances)
        except Exception as exc:  # InputError or a model failure: the query's own result is out already
            self._recover(exc)
            self._end(f"cannot start a track from query {query.id}: {type(exc).__name__}: {exc}", epoch)
            return
        labels = [instance.label or query.text for instance in result.instances]
        with self._lock:
            if self._epoch == epoch:  # not stopped while the trackers started
                self._track = Track(query, labels, instances, outcome.frame.seq, self._clock())

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
            if self._trackers.active:  # ended by a stop or a failed query: free the trackers' state here
                self._trackers.stop()
            return IDLE_WAIT_S, None
        now = self._clock()
        period = self._params.reacquire_period_s
        # Due again only after this query ran: the worker (or the synchronous caller) runs it before the
        # next step, and the query replaces or ends this track.
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
            self._publisher.publish(event, track.labels)
            self._stats.track_frame(event.status, event.frames_dropped, now, event.timings_ms.get("node_total"))
            if output.ended is not None:
                self._track = None
                self._publisher.publish(self._stopped(track, output.ended))
                return 0.0, None
        # As for the period: it runs before the next step and replaces or ends this track, so the later
        # frames of the same lost episode never ask again.
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
            steps = track.instances.step(rgb)
        except Exception as exc:  # a frame a tracker refuses is an error step; anything else ends the track
            self._recover(exc)
            event.error = f"tracker failed: {type(exc).__name__}: {exc}"
            return StepOutput(event, ended=f"the tracker failed on a frame: {type(exc).__name__}")
        timings: dict[str, float] = {}
        for step in steps:  # the trackers' stages, summed over the instances
            for stage, ms in step.timings_ms.items():
                timings[stage] = timings.get(stage, 0.0) + ms
        event.timings_ms = {"decode": _ms(decoded - started), **timings,
                            "node_total": _ms(time.perf_counter() - started)}
        summary = FrameSummary.of(steps)
        event.status, event.score, event.box, event.error, event.instances = (
            summary.status, summary.score, summary.box, summary.error, steps)
        if summary.status == LOST:
            event.reason = f"the tracker lost the target (score {summary.score:.3f})"
        elif summary.status == TRACKING:
            event.mask_area = int(np.logical_or.reduce([step.mask for step in steps if step.mask is not None]).sum())
        return StepOutput(event)

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
