"""Counters behind the diagnostics, and the diagnostic report built from them."""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any

from lens_ros.core.messages import DiagnosticReport
from lens_ros.core.outcome import ERROR, LOST, NO_BOX, NO_TARGET, OK, TRACKING

OK_LEVEL, WARN_LEVEL, ERROR_LEVEL = 0, 1, 2
TRACK_RATE_WINDOW_S = 2.0  # the track rate in the diagnostics: steps with a mask over this many seconds


class NodeStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queries_received = 0
        self.results = {OK: 0, NO_TARGET: 0, NO_BOX: 0, ERROR: 0}
        self.queries_evicted = 0
        self.last_status: str | None = None
        self.last_error: str | None = None
        self.last_latency_ms: float | None = None
        self._latency_sum_ms = 0.0
        self.track_events = {TRACKING: 0, LOST: 0, ERROR: 0}
        self.track_frames_dropped = 0
        self.track_reacquires = 0
        self.last_track_step_ms: float | None = None
        self._track_times: collections.deque[float] = collections.deque()

    def query_received(self) -> None:
        with self._lock:
            self.queries_received += 1

    def query_evicted(self) -> None:
        with self._lock:
            self.queries_evicted += 1

    def result_published(self, status: str, error: str | None, latency_ms: float) -> None:
        with self._lock:
            self.results[status] += 1
            self.last_status = status
            self.last_error = error if status == ERROR else self.last_error
            self.last_latency_ms = latency_ms
            self._latency_sum_ms += latency_ms

    def track_frame(self, status: str, frames_dropped: int, at_s: float, step_ms: float | None) -> None:
        """A frame of a track got a step (``tracking``, ``lost`` or ``error``) at ``at_s`` (node clock)."""
        with self._lock:
            self.track_events[status] += 1
            self.track_frames_dropped += frames_dropped
            if step_ms is not None:
                self.last_track_step_ms = step_ms
            if status == TRACKING:
                self._track_times.append(at_s)
                self._forget_track_times(at_s)

    def track_reacquired(self) -> None:
        with self._lock:
            self.track_reacquires += 1

    def track_rate_hz(self, now_s: float) -> float:
        """Frames that got a tracked mask per second, over the last TRACK_RATE_WINDOW_S."""
        with self._lock:
            self._forget_track_times(now_s)
            return len(self._track_times) / TRACK_RATE_WINDOW_S

    def _forget_track_times(self, now_s: float) -> None:
        while self._track_times and not now_s - TRACK_RATE_WINDOW_S < self._track_times[0] <= now_s:
            self._track_times.popleft()

    @property
    def mean_latency_ms(self) -> float | None:
        with self._lock:
            count = sum(self.results.values())
            return self._latency_sum_ms / count if count else None


@dataclass(frozen=True)
class NodeState:
    """What the diagnostics report needs besides the counters."""

    active: bool
    model: dict[str, Any]  # Segmenter.describe() of the loaded model, {} when none
    image_source: str
    frames_received: int
    frames_dropped: int
    newest_frame_age_s: float | None
    max_frame_age_s: float
    queue_length: int
    failure: str | None = None  # why the node is not active, e.g. a failed model load
    track_state: str = "off"  # off (tracking.enabled false or not active), idle, tracking
    track_query_id: int | None = None  # the query whose track runs
    now_s: float = 0.0  # node clock, for the track rate


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _inactive_message(lifecycle_state: str, failure: str | None) -> str:
    return f"{lifecycle_state}: no model loaded" + (f"; {failure}" if failure else "")


def lifecycle_report(name: str, lifecycle_state: str, failure: str | None) -> DiagnosticReport:
    """The ERROR report of a node with no configured service (unconfigured, or finalized)."""
    return DiagnosticReport(ERROR_LEVEL, name, _inactive_message(lifecycle_state, failure), "",
                            (("state", lifecycle_state),))


def diagnostic_report(name: str, stats: NodeStats, state: NodeState) -> DiagnosticReport:
    model = state.model
    level, message = OK_LEVEL, "serving"
    if not state.active:
        level, message = ERROR_LEVEL, _inactive_message("inactive", state.failure)
    elif state.newest_frame_age_s is None:
        level, message = WARN_LEVEL, f"no image received yet on {state.image_source}"
    elif 0 < state.max_frame_age_s < state.newest_frame_age_s:
        level, message = WARN_LEVEL, f"newest frame is {state.newest_frame_age_s:.1f} s old"
    elif model.get("random_weights"):
        level, message = WARN_LEVEL, "model has random weights: its outputs are meaningless"
    elif stats.last_status == ERROR:
        level, message = WARN_LEVEL, f"last query failed: {stats.last_error}"
    values = (
        ("state", "active" if state.active else "inactive"),
        ("model", str(model.get("name", ""))),
        ("device", str(model.get("device", ""))),
        ("dtype", str(model.get("dtype", ""))),
        ("random_weights", str(model.get("random_weights", ""))),
        ("queries_received", str(stats.queries_received)),
        ("results_ok", str(stats.results[OK])),
        ("results_no_target", str(stats.results[NO_TARGET])),
        ("results_no_box", str(stats.results[NO_BOX])),
        ("results_error", str(stats.results[ERROR])),
        ("queries_dropped_queue_full", str(stats.queries_evicted)),
        ("queue_length", str(state.queue_length)),
        ("frames_received", str(state.frames_received)),
        ("frames_dropped", str(state.frames_dropped)),  # replaced before any query used them
        ("frame_age_s", "n/a" if state.newest_frame_age_s is None else f"{state.newest_frame_age_s:.3f}"),
        ("last_latency_ms", _fmt(stats.last_latency_ms)),
        ("mean_latency_ms", _fmt(stats.mean_latency_ms)),
        ("track_state", state.track_state),
        ("track_query_id", "n/a" if state.track_query_id is None else str(state.track_query_id)),
        ("track_rate_hz", f"{stats.track_rate_hz(state.now_s):.1f}"),
        ("track_frames", str(stats.track_events[TRACKING])),
        ("track_frames_dropped", str(stats.track_frames_dropped)),  # arrived during a track, got no step
        ("track_lost", str(stats.track_events[LOST])),  # frames with a lost status (a lost track goes on)
        ("track_errors", str(stats.track_events[ERROR])),
        ("track_reacquires", str(stats.track_reacquires)),
        ("last_track_step_ms", _fmt(stats.last_track_step_ms)),
    )
    return DiagnosticReport(level, name, message, str(model.get("device", "")), values)
