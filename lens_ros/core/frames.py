"""The newest camera frame, kept undecoded until a query needs it."""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stamp:
    """builtin_interfaces/Time without the message class."""

    sec: int
    nanosec: int

    @property
    def seconds(self) -> float:
        return self.sec + self.nanosec * 1e-9

    @classmethod
    def from_seconds(cls, seconds: float) -> Stamp:
        nanoseconds = round(seconds * 1e9)
        return cls(nanoseconds // 1_000_000_000, nanoseconds % 1_000_000_000)

    @classmethod
    def of(cls, time_msg: Any) -> Stamp:
        return cls(int(time_msg.sec), int(time_msg.nanosec))


@dataclass(frozen=True)
class Frame:
    """One received image message (raw or compressed) with its header fields read out. ``seq`` numbers
    the frames a buffer received (1, 2, ...), so a track can tell a new frame from one it already ran on."""

    msg: Any
    compressed: bool
    stamp: Stamp
    frame_id: str
    received_s: float
    seq: int = 0

    @classmethod
    def from_msg(cls, msg: Any, compressed: bool, received_s: float) -> Frame:
        return cls(msg, compressed, Stamp.of(msg.header.stamp), str(msg.header.frame_id), received_s)


class LatestFrameBuffer:
    """Holds only the newest frame: a frame arriving while inference runs replaces the buffered one.

    ``replaced_unused`` counts frames that were overwritten before any query or track step took them;
    with query-triggered inference most frames are never used, so this is a rate, not an error count.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._used = False
        self.received = 0
        self.replaced_unused = 0

    def put(self, frame: Frame) -> None:
        with self._lock:
            if self._frame is not None and not self._used:
                self.replaced_unused += 1
            self.received += 1
            self._frame = dataclasses.replace(frame, seq=self.received)
            self._used = False

    def take_latest(self) -> Frame | None:
        """The newest frame (it stays buffered, so several queries can use it)."""
        with self._lock:
            self._used = self._frame is not None
            return self._frame

    def take_newer(self, seq: int) -> Frame | None:
        """The newest frame if it came after frame ``seq``, else None."""
        with self._lock:
            if self._frame is None or self._frame.seq <= seq:
                return None
            self._used = True
            return self._frame

    def peek(self) -> Frame | None:
        with self._lock:
            return self._frame
