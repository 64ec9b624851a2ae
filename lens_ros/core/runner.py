"""Runs one query against the newest frame; every path ends in exactly one QueryOutcome."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lens_model.errors import InputError
from lens_ros.core.frames import Frame, LatestFrameBuffer
from lens_ros.core.image_codec import compressed_msg_to_rgb, image_msg_to_rgb
from lens_ros.core.outcome import QueryOutcome
from lens_ros.core.queries import Query
from lens_ros.core.segmenter import Segmenter, is_out_of_memory, release_accelerator_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    max_frame_age_s: float  # 0 disables the check
    max_frame_future_s: float  # clock-skew tolerance for stamps ahead of the host's clock; 0 disables the check
    template: str | None  # None: the model's default prompt template
    max_new_tokens: int | None
    image_source: str  # named in "no frame yet" errors


@dataclass
class RunOutput:
    outcome: QueryOutcome
    rgb: np.ndarray | None  # the decoded frame, for the debug overlay


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def decode_frame(frame: Frame) -> np.ndarray:
    return compressed_msg_to_rgb(frame.msg) if frame.compressed else image_msg_to_rgb(frame.msg)


class QueryRunner:
    def __init__(
        self,
        segmenter: Segmenter,
        frames: LatestFrameBuffer,
        settings: RunSettings,
        clock: Callable[[], float],
    ) -> None:
        self._segmenter = segmenter
        self._frames = frames
        self._settings = settings
        self._clock = clock

    def run(self, query: Query) -> RunOutput:
        started = time.perf_counter()
        now = self._clock()
        timings = {"queue_wait": _ms(max(0.0, now - query.received_s))}

        def failure(message: str, **context) -> RunOutput:
            return RunOutput(QueryOutcome.failure(query.id, query.text, message, timings_ms=timings, **context,
                                                  **query.lineage()), None)

        frame = self._frames.take_latest()
        if frame is None:
            return failure(f"no image received yet on {self._settings.image_source}")
        age = now - frame.stamp.seconds
        context = {"frame": frame, "frame_age_s": age}
        max_future = self._settings.max_frame_future_s
        if max_future > 0 and -age > max_future:
            # Such a frame would never grow stale: without this, queries would run on it for ever.
            return failure(
                f"newest frame is stamped {-age:.3f} s in the future (stamp {frame.stamp.seconds:.3f}, frame_id "
                f"{frame.frame_id!r}, this host's clock {now:.3f}), more than frames.max_future_s = {max_future}; "
                "check that the camera's clock matches this host's (frames.max_future_s: 0 disables the check)",
                **context)
        max_age = self._settings.max_frame_age_s
        if max_age > 0 and age > max_age:
            return failure(
                f"newest frame is {age:.3f} s old (stamp {frame.stamp.seconds:.3f}, frame_id {frame.frame_id!r}), "
                f"older than frames.max_age_s = {max_age}; check that the camera is publishing and that its clock "
                "matches this host's (frames.max_age_s: 0 disables the check)", **context)

        try:
            rgb = decode_frame(frame)
        except InputError as exc:
            return failure(f"bad image: {exc}", **context)
        except Exception as exc:  # an OpenCV failure on a hostile image must not stop the worker
            return failure(f"cannot decode image: {type(exc).__name__}: {exc}", **context)
        timings["decode"] = _ms(time.perf_counter() - started)

        try:
            result = self._segmenter.predict(
                rgb, query.text, template=self._settings.template, max_new_tokens=self._settings.max_new_tokens)
        except InputError as exc:
            return failure(f"model rejected the input: {exc}", **context)
        except Exception as exc:  # any model failure, OOM included, becomes an error result
            if is_out_of_memory(exc):
                release_accelerator_memory()
                return failure(
                    f"model ran out of accelerator memory ({exc}); try a smaller model, dtype bfloat16/float16, "
                    "or fewer max_new_tokens", **context)
            log.exception("model failed on query %d", query.id)
            return failure(f"model failed: {type(exc).__name__}: {exc}", **context)

        if result.mask.shape != rgb.shape[:2]:
            return failure(f"model returned a {result.mask.shape} mask for a {rgb.shape[:2]} frame", **context)
        timings.update(result.timings_ms)
        timings["node_total"] = _ms(time.perf_counter() - started)
        return RunOutput(QueryOutcome(query.id, query.text, result.status, result=result, timings_ms=timings, **context,
                                      **query.lineage()), rgb)
