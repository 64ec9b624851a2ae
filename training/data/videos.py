"""The on-disk layout of the synthetic tracking videos: written by ``python -m training.synthetic
--videos N``, read by the tracking evaluation (``python -m training.evaluate --task tracking``).

    DIR/synthetic_videos/
      videos.json                    {"format": "lens-synthetic-videos", "version": 1, "size": S,
                                      "frames": T, "videos": [one entry per video]}
      000001/frames/000000.png ...   the RGB frames, S x S
      000001/labels/000000.png ...   uint8 label images: 0 background, k the visible pixels of object k

A video's entry: ``id`` ("000001"), ``query`` (a referring expression with one referent on frame 0)
and its ``expression_type``, ``target`` (the label of the object it refers to), ``crosser`` (the
label of the object aimed at the target), ``objects`` (per
label: ``shape``, ``color``, ``size``, ``extent`` (bounding-circle radius, px), ``depth``
(painting order, higher hides lower) and ``centers`` (x, y per frame)), and ``crossings``: the
frame ranges ``start``..``end`` (inclusive) in which the target's and the ``other`` object's
bounding circles overlap.

A folder given to the reader is untrusted: ``videos.json`` is size-capped and checked field by
field, video ids are six digits (no paths), and frames are decoded under the pixel budget.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.data.images import DECODE_ERRORS, check_pixel_budget, read_rgb
from training.data.skips import BrokenEntry
from training.data.synthetic_motion import SyntheticVideo

FOLDER = "synthetic_videos"
INDEX = "videos.json"
FORMAT = "lens-synthetic-videos"
VERSION = 1
MAX_INDEX_BYTES = 64 * 2**20
MAX_FRAMES = 100_000
PNG_COMPRESSION = 1


def video_id(number: int) -> str:
    return f"{number:06d}"


def write_video(folder: Path, number: int, video: SyntheticVideo) -> dict[str, Any]:
    """Write one video's frames and label images under ``folder``; returns its ``videos.json`` entry."""
    root = folder / video_id(number)
    for kind, arrays in (("frames", video.frames), ("labels", video.labels)):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for t, array in enumerate(arrays):
            Image.fromarray(array).save(root / kind / f"{t:06d}.png", compress_level=PNG_COMPRESSION)
    return {
        "id": video_id(number),
        "query": video.query,
        "expression_type": video.expression_type,
        "target": video.target + 1,
        "crosser": video.crosser + 1,
        "objects": [{"label": i + 1, "shape": o.shape, "color": o.color, "size": o.size, "extent": round(o.extent, 3),
                     "depth": o.depth, "centers": np.round(o.centers, 2).tolist()} for i, o in enumerate(video.objects)],
        "crossings": [{"start": c.start, "end": c.end, "other": c.other + 1} for c in video.crossings()],
    }


def write_index(folder: Path, size: int, frames: int, entries: list[dict[str, Any]]) -> None:
    index = {"format": FORMAT, "version": VERSION, "size": size, "frames": frames, "videos": entries}
    (folder / INDEX).write_text(json.dumps(index), encoding="utf-8")


@dataclass(frozen=True)
class VideoCrossing:
    start: int
    end: int
    other: int  # label


@dataclass(frozen=True)
class Video:
    """One video of a folder; frames and label images are read on demand."""

    root: Path
    id: str
    query: str
    expression_type: str
    target: int  # label
    num_frames: int
    crossings: tuple[VideoCrossing, ...]

    def frame(self, t: int) -> np.ndarray:
        return read_rgb(self._path("frames", t))

    def labels(self, t: int) -> np.ndarray:
        path = self._path("labels", t)
        try:
            with Image.open(path) as image:
                check_pixel_budget(image, path, "label image")
                if image.mode != "L":
                    raise BrokenEntry("bad label image", f"{path} is {image.mode}, not 8-bit grey")
                return np.array(image)
        except DECODE_ERRORS as error:
            raise BrokenEntry("undecodable label image", f"{path}: {error}") from error

    def _path(self, kind: str, t: int) -> Path:
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} outside 0..{self.num_frames - 1}")
        return self.root / self.id / kind / f"{t:06d}.png"


def read_videos(directory: str | Path) -> list[Video]:
    """The videos of ``DIR/synthetic_videos`` (or of that folder itself)."""
    directory = Path(directory)
    root = directory / FOLDER if (directory / FOLDER / INDEX).is_file() else directory
    path = root / INDEX
    if not path.is_file():
        raise ValueError(f"no {FOLDER}/{INDEX} in {directory}: write one with python -m training.synthetic --videos N")
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise ValueError(f"{path} is over {MAX_INDEX_BYTES // 2**20} MiB")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path} is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ValueError(f"{path} is not a version-{VERSION} {FORMAT} index")
    frames = index.get("frames")
    if not _integer(frames, 2, MAX_FRAMES) or not isinstance(index.get("videos"), list):
        raise ValueError(f"{path} needs 'frames' (2..{MAX_FRAMES}) and a list of 'videos'")
    return [_video(root, entry, frames, f"{path} video {i}") for i, entry in enumerate(index["videos"])]


def _video(root: Path, entry: Any, frames: int, where: str) -> Video:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not an object")
    ident, query, kind, target = (entry.get(k) for k in ("id", "query", "expression_type", "target"))
    if not (isinstance(ident, str) and len(ident) == 6 and ident.isascii() and ident.isdigit()):
        raise ValueError(f"{where}: 'id' must be six digits")
    if not isinstance(query, str) or not query or not isinstance(kind, str):
        raise ValueError(f"{where}: 'query' and 'expression_type' must be strings")
    if not _integer(target, 1, 255):
        raise ValueError(f"{where}: 'target' must be a label 1..255")
    crossings = entry.get("crossings", [])
    if not isinstance(crossings, list) or not all(
            isinstance(c, dict) and _integer(c.get("start"), 0, frames - 1) and _integer(c.get("end"), 0, frames - 1)
            and _integer(c.get("other"), 1, 255) for c in crossings):
        raise ValueError(f"{where}: 'crossings' must be a list of {{start, end, other}} within the video")
    return Video(root, ident, query, kind, target, frames,
                 tuple(VideoCrossing(c["start"], c["end"], c["other"]) for c in crossings))


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
