"""What happened to one query, and its JSON form published on ``result``; what happened to one frame
of a track, and its JSON form published on ``track/status``."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lens_model.instance_tracks import InstanceStep
from lens_model.result import Box, SegmentationResult
from lens_ros.core.frames import Frame
from lens_ros.core.queries import ASKED

# A query's status: its result's (lens_model.result.SegmentationResult.status), or error.
OK = "ok"
NO_TARGET = "no_target"
NO_BOX = "no_box"
ERROR = "error"
RESULT_SCHEMA = "lens_ros/result/3"  # 2 added trigger and origin_query_id; 3 the no_target status and instances
MAX_ERROR_CHARS = 1000
# The status of a track event: a frame with a mask, a frame where the target was lost, a frame that got
# no mask for another reason (the track goes on after both), the end of a track.
TRACKING, LOST, STOPPED = "tracking", "lost", "stopped"
TRACK_SCHEMA = "lens_ros/track/2"  # 2 added each instance's step


def _stamp_json(frame: Frame | None) -> dict[str, int] | None:
    return None if frame is None else {"sec": frame.stamp.sec, "nanosec": frame.stamp.nanosec}


def _short(message: str) -> str:
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "..."


@dataclass
class QueryOutcome:
    """Exactly one per query. ``frame`` is the frame actually used (None when none was usable)."""

    query_id: int
    query: str
    status: str
    error: str | None = None
    frame: Frame | None = None
    frame_age_s: float | None = None
    result: SegmentationResult | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    trigger: str = ASKED  # Query.trigger
    origin_query_id: int | None = None  # Query.origin_id: a re-acquisition's query message

    @classmethod
    def failure(cls, query_id: int, query: str, message: str, **context: Any) -> QueryOutcome:
        return cls(query_id, query, ERROR, error=_short(message), **context)

    def to_json_dict(self) -> dict[str, Any]:
        res = self.result.to_dict() if self.result is not None else {}
        frame = self.frame
        return {
            "schema": RESULT_SCHEMA,
            "query_id": self.query_id,
            "query": self.query,
            "trigger": self.trigger,
            "origin_query_id": self.query_id if self.origin_query_id is None else self.origin_query_id,
            "status": self.status,
            "error": self.error,
            "stamp": _stamp_json(frame),
            "frame_id": None if frame is None else frame.frame_id,
            "frame_age_s": None if self.frame_age_s is None else round(self.frame_age_s, 4),
            "instances": res.get("instances", []),
            "box": res.get("box"),
            "box_status": res.get("box_status"),
            "score": res.get("score"),
            "label": res.get("label"),
            "reasoning": res.get("reasoning"),
            "answer": res.get("answer"),
            "mask_area": res.get("mask_area"),
            "random_weights": res.get("random_weights"),
            "timings_ms": {name: round(float(ms), 2) for name, ms in self.timings_ms.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), ensure_ascii=False)


@dataclass
class TrackEvent:
    """One message on ``track/status``: a frame of the track of query ``query_id`` (``frame`` set), or
    the end of that track (``stopped``, no frame). ``error`` says why a frame got no mask, ``reason``
    why the target was lost on it (``lost``) or why the track ended (``stopped``). ``instances`` are the
    steps of the query's instances on the frame, one tracker each; ``status``, ``score`` and ``box`` sum
    them up (``FrameSummary``)."""

    query_id: int
    origin_query_id: int
    query: str
    status: str
    frame: Frame | None = None
    score: float | None = None
    box: Box | None = None
    mask_area: int | None = None
    frames_dropped: int = 0  # frames since the track's previous frame that got no step
    error: str | None = None
    reason: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    instances: Sequence[InstanceStep] = ()

    def to_json(self) -> str:
        return json.dumps({
            "schema": TRACK_SCHEMA,
            "query_id": self.query_id,
            "origin_query_id": self.origin_query_id,
            "query": self.query,
            "status": self.status,
            "stamp": _stamp_json(self.frame),
            "frame_id": None if self.frame is None else self.frame.frame_id,
            "score": None if self.score is None else round(float(self.score), 4),
            "box": None if self.box is None else [round(float(v), 2) for v in self.box],
            "mask_area": self.mask_area,
            "frames_dropped": self.frames_dropped,
            "error": None if self.error is None else _short(self.error),
            "reason": None if self.reason is None else _short(self.reason),
            "instances": [step.to_dict() for step in self.instances],
            "timings_ms": {name: round(float(ms), 2) for name, ms in self.timings_ms.items()},
        }, ensure_ascii=False)
