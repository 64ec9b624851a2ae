"""The tracking task of ``python -m training.evaluate``: seed a track on each synthetic video's first
frame, step it through the rest, and score it (``training.track_metrics``).

    python -m training.evaluate --task tracking --model lens-synth-demo --data DIR \
        [--track-mode box|memory] [--memory-weights FILE] [--seed-from query|gt] [--limit N] [--frames T]

``--seed-from query`` (default) runs the video's query on frame 0 and seeds the track with its mask,
as the node does; ``gt`` seeds it with the target's true mask on frame 0, which measures the tracker
alone. The videos are those of ``python -m training.synthetic --videos N`` (``training.data.videos``).
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from lens_model.predictor import LensPredictor
from lens_model.tracker import LensTracker, TrackerConfig
from training.data.videos import Video
from training.iou import mask_iou
from training.track_metrics import VideoScore, crossing_frames

SeedFrom = Literal["query", "gt"]
SEED_FROM = ("query", "gt")


def track_video(predictor: LensPredictor, tracker: LensTracker, video: Video, seed_from: SeedFrom,
                max_frames: int | None = None, step_ms: list[float] | None = None) -> VideoScore:
    """One video: seed on frame 0, then one step per later frame (at most ``max_frames`` frames in all)."""
    frames = video.num_frames if max_frames is None else min(video.num_frames, max_frames)
    first, truth = video.frame(0), video.labels(0) == video.target
    seed = truth if seed_from == "gt" else predictor.predict(first, video.query).mask
    score = VideoScore(video.id, crossing_frames([(c.start, c.end) for c in video.crossings]),
                       crossings=sum(1 for c in video.crossings if c.start < frames))
    started = bool(seed.any())
    if started:
        score.seed_iou = mask_iou(seed, truth)
        tracker.start(first, seed)
    for t in range(1, frames):
        labels = video.labels(t)
        if not started:
            score.add(t, None, True, labels, video.target)
            continue
        step = tracker.step(video.frame(t))
        if step_ms is not None:
            step_ms.append(step.timings_ms["total"])
        score.add(t, step.mask, step.lost, labels, video.target)
    tracker.stop()
    return score


def run_tracking(predictor: LensPredictor, videos: list[Video], config: TrackerConfig,
                 memory_weights: str | Path | None = None, seed_from: SeedFrom = "query",
                 max_frames: int | None = None, progress: bool = True) -> tuple[list[VideoScore], float | None]:
    """Scores of every video and the median track step time (ms)."""
    tracker = predictor.tracker(config, memory_weights)
    step_ms: list[float] = []
    scores = [track_video(predictor, tracker, video, seed_from, max_frames, step_ms)
              for video in tqdm(videos, desc="track", unit="video", disable=not progress)]
    return scores, statistics.median(step_ms) if step_ms else None


def format_tracking(summary: dict[str, dict], title: str) -> str:
    """One line per video subset: videos, frames, mean IoU (all frames, apart, at crossings; percent),
    lost rate, identity switches (all, at crossings) and crossings."""
    lines = [title, f"{'videos':<16} {'n':>4} {'frames':>7} {'mean IoU':>9} {'apart':>6} {'crossing':>9} {'lost':>7} "
                    f"{'switches':>9} {'at cross':>9} {'crossings':>10}"]
    for name, t in summary.items():
        iou, apart, crossing, lost = (
            "-" if t[key] is None else f"{100 * t[key]:.1f}" for key in ("mean_iou", "iou_apart", "iou_at_crossings", "lost_rate"))
        lines.append(f"{name:<16} {t['videos']:>4} {t['frames']:>7} {iou:>9} {apart:>6} {crossing:>9} {lost:>5} % "
                     f"{t['identity_switches']:>9} {t['switches_at_crossings']:>9} {t['crossings']:>10}")
    return "\n".join(lines)
