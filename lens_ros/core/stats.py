"""Counters behind the diagnostics, and the diagnostic report built from them."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from lens_ros.core.messages import DiagnosticReport
from lens_ros.core.outcome import ERROR, NO_BOX, OK

OK_LEVEL, WARN_LEVEL, ERROR_LEVEL = 0, 1, 2


class NodeStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queries_received = 0
        self.results = {OK: 0, NO_BOX: 0, ERROR: 0}
        self.queries_evicted = 0
        self.last_status: str | None = None
        self.last_error: str | None = None
        self.last_latency_ms: float | None = None
        self._latency_sum_ms = 0.0

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
        ("results_no_box", str(stats.results[NO_BOX])),
        ("results_error", str(stats.results[ERROR])),
        ("queries_dropped_queue_full", str(stats.queries_evicted)),
        ("queue_length", str(state.queue_length)),
        ("frames_received", str(state.frames_received)),
        ("frames_dropped", str(state.frames_dropped)),  # replaced before any query used them
        ("frame_age_s", "n/a" if state.newest_frame_age_s is None else f"{state.newest_frame_age_s:.3f}"),
        ("last_latency_ms", _fmt(stats.last_latency_ms)),
        ("mean_latency_ms", _fmt(stats.mean_latency_ms)),
    )
    return DiagnosticReport(level, name, message, str(model.get("device", "")), values)
