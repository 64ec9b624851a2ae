"""Helpers shared by the test_ros_* tests: a deterministic segmenter double, message builders, DDS setup."""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lens_model.errors import InputError
from lens_model.result import NO_TARGET, Box, Instance, SegmentationResult
from lens_ros.core import messages
from lens_ros.core.frames import Stamp
from lens_ros.core.image_codec import encode_image
from lens_ros.core.params import LensParams
from lens_ros.core.publishing import Output
from lens_ros.core.segmenter import tracker_fields
from lens_ros.core.service import LensService
from lens_ros.msgs.rosbags_types import lens_typestore, rosbags_kit
from lens_ros.transports.dds import LOOPBACK_CYCLONEDDS_URI

TYPESTORE = lens_typestore()
KIT = rosbags_kit(TYPESTORE)


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the node recognises by name."""


@dataclass
class FakeTrackStep:
    """lens_model.tracker.TrackStep, as the node reads it."""

    mask: np.ndarray
    box: Box | None
    score: float
    lost: bool
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class FakeEncodedFrame:
    """lens_model.tracker.EncodedFrame, as the trackers of one track share it."""

    image: np.ndarray
    timings_ms: dict[str, float]


class FakeTracker:
    """Test double of lens_model.tracker.LensTracker. Frames carry their index in pixel [0, 0, 0] (``marked``):
    a step's mask is the 4x4 square at (index, index), so a published mask tells which frame the step ran on.

    Per frame index: ``lost_at`` reports lost, ``fail_at`` raises RuntimeError, ``bad_mask_at`` returns
    a mask one row too tall. A frame of another size than the seed frame is refused with InputError, as
    the real tracker refuses a bad frame (state unchanged). ``gate`` (if set) holds each start and step
    until it is set.
    """

    def __init__(self, activity: list[tuple[str, int]]) -> None:
        self.activity = activity  # shared with the segmenter: what ran, in order
        self.lost_at: set[int] = set()
        self.fail_at: set[int] = set()
        self.bad_mask_at: set[int] = set()
        self.gate: threading.Event | None = None
        self.starting = threading.Event()
        self.stepping = threading.Event()
        self.started_on: list[int] = []  # index of each seed frame
        self.seed_masks: list[np.ndarray] = []
        self.stepped: list[int] = []  # index of each frame a step ran on
        self.threads: list[threading.Thread] = []
        self.stops = 0
        self._shape: tuple[int, ...] | None = None

    @property
    def active(self) -> bool:
        return self._shape is not None

    def start(self, image: np.ndarray, mask: np.ndarray) -> None:
        if not mask.any():
            raise InputError("the mask to track is empty")
        self.starting.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        self.started_on.append(int(image[0, 0, 0]))
        self.seed_masks.append(mask.copy())
        self._shape = image.shape

    def encode(self, image: np.ndarray) -> FakeEncodedFrame:
        return FakeEncodedFrame(image, {"encode": 0.5})

    def step(self, frame: np.ndarray | FakeEncodedFrame) -> FakeTrackStep:
        assert self._shape is not None, "step before start"
        image = frame.image if isinstance(frame, FakeEncodedFrame) else frame
        index = int(image[0, 0, 0])
        self.activity.append(("step", index))
        self.stepped.append(index)
        self.threads.append(threading.current_thread())
        self.stepping.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if image.shape != self._shape:
            raise InputError(f"frame of shape {image.shape} does not match the track's {self._shape}")
        if index in self.fail_at:
            raise RuntimeError("boom inside the tracker")
        height, width = image.shape[:2]
        mask = np.zeros((height + (index in self.bad_mask_at), width), dtype=bool)
        mask[index:index + 4, index:index + 4] = True
        lost = index in self.lost_at
        return FakeTrackStep(mask, (float(index), float(index), index + 4.0, index + 4.0), 0.1 if lost else 0.9,
                             lost, {"track_step": 1.5})

    def stop(self) -> None:
        self.stops += 1
        self._shape = None


class ShiftedTracker(FakeTracker):
    """FakeTracker's square moved 10 pixels right, with score 0.5: another object."""

    def step(self, frame: np.ndarray | FakeEncodedFrame) -> FakeTrackStep:
        step = super().step(frame)
        step.mask = np.roll(step.mask, 10, axis=1)
        x1, y1, x2, y2 = step.box
        step.box, step.score = (x1 + 10, y1, x2 + 10, y2), 0.1 if step.lost else 0.5
        return step


class FakeSegmenter:
    """Test double: the box is the top-left quarter of the image, the mask that box, label "thing".

    ``behaviour`` may be "ok", "multi" (a second instance, the bottom-right quarter, label "other thing"),
    "no_target", "no_box", "raise", "oom" or "bad_mask"; ``gate`` (if set) makes
    predict wait until it is set, to hold the worker busy. ``tracker()`` is its one FakeTracker.
    """

    def __init__(self, behaviour: str = "ok", gate: threading.Event | None = None) -> None:
        self.behaviour = behaviour
        self.gate = gate
        self.calls: list[tuple[tuple[int, ...], str, str | None, int | None]] = []
        self.images: list[np.ndarray] = []
        self.threads: list[threading.Thread] = []  # the thread each predict ran on
        self.started = threading.Event()
        self.activity: list[tuple[str, int]] = []  # ("predict", frame index) / ("done", frame index) and steps
        self.fake_tracker = FakeTracker(self.activity)
        self.tracker_args: list[tuple[Any, str | None]] = []

    def describe(self) -> dict[str, Any]:
        return {"name": "fake", "device": "cpu", "dtype": "float32", "random_weights": False}

    def tracker(self, config: Any = None, memory_weights: str | None = None) -> FakeTracker:
        self.tracker_args.append((config, memory_weights))
        return self.fake_tracker

    def predict(self, image_rgb: np.ndarray, query: str, *, template: str | None = None,
                max_new_tokens: int | None = None) -> SegmentationResult:
        self.activity.append(("predict", int(image_rgb[0, 0, 0])))
        try:
            return self._predict(image_rgb, query, template, max_new_tokens)
        finally:
            self.activity.append(("done", int(image_rgb[0, 0, 0])))

    def _predict(self, image_rgb: np.ndarray, query: str, template: str | None,
                 max_new_tokens: int | None) -> SegmentationResult:
        self.calls.append((image_rgb.shape, query, template, max_new_tokens))
        self.images.append(image_rgb.copy())
        self.threads.append(threading.current_thread())
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.behaviour == "raise":
            raise RuntimeError("boom inside the model")
        if self.behaviour == "oom":
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        height, width = image_rgb.shape[:2]
        mask = np.zeros((height, width), dtype=bool)
        if self.behaviour == "bad_mask":
            mask = np.zeros((height + 1, width), dtype=bool)
        if self.behaviour == "no_box":
            return SegmentationResult(query, mask, None, "no box in answer", None, 0.0, "hmm", "nothing",
                                      {"generate": 1.0})
        if self.behaviour == "no_target":
            return SegmentationResult(query, mask, None, NO_TARGET, None, 0.0, "none here", "<answer>[]</answer>",
                                      {"generate": 1.0})
        instances = [quarter_instance(height, width, 0, 0, "thing", 0.75)]
        if self.behaviour == "multi":
            instances.append(quarter_instance(height, width, height // 2, width // 2, "other thing", 0.5))
        for instance in instances:
            mask[:height] |= instance.mask
        return SegmentationResult(query, mask, instances[0].box, "ok", "thing", 0.75, "it is there",
                                  "<answer>[...]</answer>", {"generate": 2.0, "mask_decoder": 1.0},
                                  instances=instances)


def quarter_instance(height: int, width: int, top: int, left: int, label: str, score: float) -> Instance:
    """An instance whose mask and box are the quarter of a height x width image at (top, left)."""
    mask = np.zeros((height, width), dtype=bool)
    mask[top:top + height // 2, left:left + width // 2] = True
    box = (float(left), float(top), float(left + width // 2), float(top + height // 2))
    return Instance(box, mask, score, label)


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class RecordingSink:
    """Collects (output, message) pairs as a transport would publish them."""

    def __init__(self) -> None:
        self.published: list[tuple[Output, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, output: Output, msg: Any) -> None:
        with self._lock:
            self.published.append((output, msg))

    def of(self, output: Output) -> list[Any]:
        with self._lock:
            return [msg for out, msg in self.published if out is output]

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(msg.data) for msg in self.of(Output.RESULT)]

    def wait_for_results(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(self.of(Output.RESULT)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.results()


def open_fake_tracker(segmenter: FakeSegmenter, params: LensParams) -> FakeTracker:
    """lens_ros.core.segmenter.open_tracker without lens_model.tracker: the fake gets TrackerConfig's fields."""
    return segmenter.tracker(tracker_fields(params), params.track_memory_weights or None)


def make_service(segmenter: FakeSegmenter, clock: ManualClock, sink: RecordingSink, *, synchronous: bool = False,
                 **overrides: Any) -> LensService:
    params = LensParams.from_ros({**{"model.name": "fake"}, **overrides})
    return LensService(params, KIT, sink, clock, image_source="/camera/image_raw",
                       load=lambda name, device, dtype: segmenter, track=open_fake_tracker, synchronous=synchronous)


def image_msg(pixels: np.ndarray, encoding: str, stamp_s: float, frame_id: str = "camera", kit: Any = KIT) -> Any:
    hdr = messages.header(kit, Stamp.from_seconds(stamp_s), frame_id)
    return messages.image(kit, hdr, encode_image(pixels, encoding))


def raw_image_msg(kit: Any, *, height: int, width: int, encoding: str, step: int, data: bytes,
                  stamp_s: float = 1000.0) -> Any:
    """An Image with arbitrary (possibly inconsistent) fields, for bad-input tests."""
    hdr = messages.header(kit, Stamp.from_seconds(stamp_s), "camera")
    return kit.Image(header=hdr, height=height, width=width, encoding=encoding, is_bigendian=0, step=step,
                     data=kit.uint8_sequence(data))


def pattern_image(height: int = 48, width: int = 64) -> np.ndarray:
    """An RGB image whose pixels all differ, so channel swaps and row shifts show up."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 4) % 256, (y * 5) % 256, (x + y * 3) % 256], axis=-1).astype(np.uint8)


def marked(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    """pattern_image with the frame's index in pixel [0, 0, 0], where FakeTracker and FakeSegmenter read it."""
    pixels = pattern_image(height, width)
    pixels[0, 0, 0] = index
    return pixels


def unique_domain_id(offset: int = 0) -> int:
    """A DDS domain for this test run, so parallel runs on one host do not hear each other; test modules
    that leave DDS entities behind in this process use different offsets."""
    return 10 + (os.getpid() + offset) % 200


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables set for the duration, then restored (or removed again)."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def loopback_dds(domain_id: int) -> Iterator[int]:
    """CYCLONEDDS_URI on loopback and ROS_DOMAIN_ID set for the duration, then restored."""
    with environment({"CYCLONEDDS_URI": LOOPBACK_CYCLONEDDS_URI, "ROS_DOMAIN_ID": str(domain_id)}):
        yield domain_id


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
