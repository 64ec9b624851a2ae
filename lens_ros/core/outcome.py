"""What happened to one query, and its JSON form published on ``result``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lens_model.result import SegmentationResult
from lens_ros.core.frames import Frame

OK = "ok"
NO_BOX = "no_box"
ERROR = "error"
RESULT_SCHEMA = "lens_ros/result/1"
MAX_ERROR_CHARS = 1000


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

    @classmethod
    def failure(cls, query_id: int, query: str, message: str, **context: Any) -> QueryOutcome:
        if len(message) > MAX_ERROR_CHARS:
            message = message[:MAX_ERROR_CHARS] + "..."
        return cls(query_id, query, ERROR, error=message, **context)

    def to_json_dict(self) -> dict[str, Any]:
        res = self.result.to_dict() if self.result is not None else {}
        frame = self.frame
        return {
            "schema": RESULT_SCHEMA,
            "query_id": self.query_id,
            "query": self.query,
            "status": self.status,
            "error": self.error,
            "stamp": None if frame is None else {"sec": frame.stamp.sec, "nanosec": frame.stamp.nanosec},
            "frame_id": None if frame is None else frame.frame_id,
            "frame_age_s": None if self.frame_age_s is None else round(self.frame_age_s, 4),
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
