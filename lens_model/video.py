"""``lens-segment --video``: the query on the first frame, then the tracker through the rest.

Several instances: each is followed by a tracker of its own (``lens_model.instance_tracks``). A frame's
mask is the union of the instances' masks, its ``instances/`` image numbers them (0 background, i + 1
instance i, the earlier one winning an overlap), and its line gives each instance's step and a summary:
the frame is ``tracking`` while any instance is, else ``lost`` when one was lost on it, else ``error``
when one could not use it, else ``no_track``; the summary's score is the mean and its box the box around
those instances' (with one instance, that instance's).

A lost step has no mask (a frame with no mask writes an all-zero mask PNG) and does not end the track:
the tracker keeps stepping through every frame to the end of the video, searching where the target was
heading, and the instance is ``tracking`` again once the tracker finds it. The query is not re-run.

Streaming: one decoded frame is held at a time. Each frame's mask PNG, its line of ``track.jsonl`` and
its overlay frame go to the staging folder (``StagedOutputs``) as soon as the frame is done, so memory
does not grow with the video's length; the disk holds one mask PNG per frame and the overlay video
until the run commits them all, or removes them all when it fails.

Untrusted videos: only a regular file in a container this module recognises by its first bytes
(MP4/MOV, AVI, Matroska/WebM) reaches OpenCV's FFmpeg backend, so playlists and other formats that
make FFmpeg open further files are refused; the frame size FFmpeg reports is checked against the
pixel budget before any frame is decoded, and every frame must keep the first frame's size.
"""
from __future__ import annotations

import collections
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from lens_model.errors import InputError
from lens_model.image_io import check_pixel_budget, display_path, encode_png
from lens_model.instance_tracks import (
    ERROR, LOST, NO_TRACK, QUERY, TRACKING, FrameSummary, InstanceStep, InstanceTracks, Tracker, frame_mask,
    query_steps)
from lens_model.result import Box, SegmentationResult
from lens_model.staged_outputs import StagedOutputs
from lens_model.visualize import draw_mask_and_boxes, draw_overlay

MASKS = "masks"  # DIR/masks/000000.png, ...
TRACK_LINES = "track.jsonl"
OVERLAY = "overlay.mp4"
OVERLAY_FOURCC = "mp4v"  # MPEG-4 Part 2: the encoder opencv-python-headless has (no H.264 encoder in its FFmpeg)
DEFAULT_FPS = 30.0  # for the overlay when the video does not say its frame rate
CONTAINERS = "MP4/MOV, AVI, Matroska or WebM"
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")  # an MP4/MOV file's first box
INSTANCES = "instances"  # DIR/instances/000000.png, ...


def container_of(head: bytes) -> str | None:
    """The container family of a file from its first 12 bytes, or None if it is none this module reads."""
    if head[4:8] in _MP4_BOXES:
        return "MP4/MOV"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "Matroska/WebM"
    return None


class VideoReader:
    """A checked video file, decoded one frame at a time (RGB uint8)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.shown = display_path(path)
        self.container = self._check_file(path)
        # An absolute path: FFmpeg reads a name like "concat:a|b" or "http:x" as a protocol, never "/...".
        self._capture = cv2.VideoCapture(os.path.abspath(path), cv2.CAP_FFMPEG)
        if not self._capture.isOpened():
            raise InputError(f"video {self.shown}: OpenCV's FFmpeg backend cannot decode this {self.container} file")
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.width <= 0 or self.height <= 0:
            self.close()
            raise InputError(f"video {self.shown} has no video stream of a known size")
        try:
            check_pixel_budget(self.width, self.height)
        except InputError as exc:
            self.close()
            raise InputError(f"video {self.shown}: {exc}") from None
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None  # the container's claim, not a promise

    def _check_file(self, path: str | os.PathLike[str]) -> str:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the open
        except FileNotFoundError:
            raise InputError(f"video {self.shown} does not exist") from None
        except OSError as exc:
            raise InputError(f"cannot open video {self.shown}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InputError(f"video {self.shown} is not a regular file")
            head = os.read(fd, 12)
        except OSError as exc:
            raise InputError(f"cannot read video {self.shown}: {exc.strerror}") from None
        finally:
            os.close(fd)
        container = container_of(head)
        if container is None:
            raise InputError(f"video {self.shown} is not a video file this tool reads ({CONTAINERS})")
        return container

    def frames(self, limit: int | None = None) -> Iterator[np.ndarray]:
        """Up to ``limit`` frames, in order, until the decoder stops."""
        read = 0
        while limit is None or read < limit:
            ok, pixels = self._capture.read()
            if not ok:
                return
            read += 1
            yield cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels)

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class Predictor(Protocol):
    def predict(self, image: np.ndarray, query: str, *, template: str | None = None,
                max_new_tokens: int | None = None) -> SegmentationResult: ...


@dataclass
class FrameLine:
    """One line of track.jsonl: the frame's summary, then each instance's step."""

    index: int
    status: str
    score: float | None = None
    box: Box | None = None
    mask_area: int = 0
    error: str | None = None
    instances: Sequence[InstanceStep] = ()

    @classmethod
    def of(cls, index: int, steps: Sequence[InstanceStep], mask: np.ndarray) -> FrameLine:
        """The line of a tracked frame (``FrameSummary``); the area is the frame's mask's."""
        summary = FrameSummary.of(steps)
        return cls(index, summary.status, summary.score, summary.box, int(mask.sum()), summary.error, steps)

    def to_json(self) -> str:
        return json.dumps({
            "index": self.index, "status": self.status,
            "score": None if self.score is None else round(float(self.score), 4),
            "box": None if self.box is None else [round(float(v), 2) for v in self.box],
            "mask_area": self.mask_area, "error": self.error,
            "instances": [step.to_dict() for step in self.instances]}, ensure_ascii=False)


@dataclass
class VideoRun:
    result: SegmentationResult  # the query's, on the first frame
    frames: int
    statuses: collections.Counter[str]


def segment_video(predictor: Predictor, new_tracker: Callable[[], Tracker], reader: VideoReader, query: str,
                  outputs: StagedOutputs, *, template: str | None = None, max_new_tokens: int | None = None,
                  max_frames: int | None = None) -> VideoRun:
    """Stage masks/, instances/, track.jsonl and overlay.mp4 for ``reader``'s frames (``outputs`` is not
    committed); ``new_tracker`` gives a tracker for each instance of the query's result."""
    frames = reader.frames(max_frames)
    first = next(frames, None)
    if first is None:
        raise InputError(f"video {reader.shown} has no frame that can be decoded")
    height, width = first.shape[:2]
    check_pixel_budget(width, height)  # the decoder's size, should it differ from the container's
    overlay = cv2.VideoWriter(str(outputs.staging_path(OVERLAY)), cv2.VideoWriter_fourcc(*OVERLAY_FOURCC),
                              reader.fps, (width, height))
    if not overlay.isOpened():
        raise OSError(f"could not write {OVERLAY}: OpenCV cannot encode {OVERLAY_FOURCC} video here")
    total = min(filter(None, (reader.frame_count, max_frames)), default=None)
    progress = tqdm(total=total, unit="frame", desc="lens-segment", disable=None, file=sys.stderr)
    statuses: collections.Counter[str] = collections.Counter()
    try:
        with open(outputs.staging_path(TRACK_LINES), "w", encoding="utf-8") as lines:
            result = predictor.predict(first, query, template=template, max_new_tokens=max_new_tokens)
            tracks = InstanceTracks(new_tracker, first, result.instances)
            labels = [instance.label or query for instance in result.instances]
            line = FrameLine(0, QUERY, result.score, result.box, result.mask_area, None, query_steps(result.instances))
            _stage_frame(outputs, overlay, lines, line, result.mask, result.instance_map(), draw_overlay(first, result))
            statuses[QUERY] += 1
            progress.update()
            for index, frame in enumerate(frames, start=1):
                if frame.shape[:2] != (height, width):
                    steps = tracks.refused(f"frame of {frame.shape[1]}x{frame.shape[0]} pixels in a video of "
                                           f"{width}x{height}")
                else:
                    steps = tracks.step(frame)
                mask, instances = frame_mask(steps, (height, width))
                line = FrameLine.of(index, steps, mask)
                picture = cv2.resize(frame, (width, height)) if frame.shape[:2] != (height, width) else frame
                captions = [(step.box, f"{label} {step.score:.2f}") for step, label in zip(steps, labels, strict=True)
                            if step.status == TRACKING] or [(None, line.status.replace("_", " "))]
                picture = draw_mask_and_boxes(picture, mask, captions)
                _stage_frame(outputs, overlay, lines, line, mask, instances, picture)
                statuses[line.status] += 1
                progress.update()
    finally:
        overlay.release()
        progress.close()
    outputs.adopt(TRACK_LINES)
    outputs.adopt(OVERLAY)
    count = sum(statuses.values())
    if reader.frame_count is not None and count < min(reader.frame_count, max_frames or reader.frame_count):
        print(f"note: decoded {count} of the {reader.frame_count} frames video {reader.shown} announces",
              file=sys.stderr)
    return VideoRun(result, count, statuses)


def _stage_frame(outputs: StagedOutputs, overlay: cv2.VideoWriter, lines: Any, line: FrameLine, mask: np.ndarray,
                 instances: np.ndarray, picture: np.ndarray) -> None:
    outputs.write(f"{MASKS}/{line.index:06d}.png", encode_png(mask.astype(np.uint8) * 255))
    outputs.write(f"{INSTANCES}/{line.index:06d}.png", encode_png(instances))
    lines.write(line.to_json() + "\n")
    overlay.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))


def result_summary(video: str | os.PathLike[str] | Path, model: str, run: VideoRun, mode: str) -> dict[str, Any]:
    """result.json of a video: the query's result, as for an image, and what the track did."""
    return {"video": display_path(video), "model": model, "frame": 0, **run.result.to_dict(),
            "track": {"mode": mode, "frames": run.frames, **{status: run.statuses[status] for status in
                                                            (TRACKING, LOST, ERROR, NO_TRACK)}}}
