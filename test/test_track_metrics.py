"""Tracking metrics on hand-made frames, and the tracking task of training.evaluate end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from training import evaluate
from training.data.synthetic_motion import MovingObject, crossings
from training.data.videos import read_videos
from training.synthetic import generate_videos
from training.track_eval import track_video
from training.track_metrics import ON_OTHER, ON_TARGET, UNDECIDED, VideoScore, crossing_frames, identity, summarize

TARGET, OTHER = 1, 2


def labels() -> np.ndarray:
    """Target (label 1) on columns 0-3, another object (label 2) on columns 6-9, of a 4 x 10 frame."""
    image = np.zeros((4, 10), np.uint8)
    image[:, 0:4] = TARGET
    image[:, 6:10] = OTHER
    return image


def columns(start: int, stop: int) -> np.ndarray:
    mask = np.zeros((4, 10), bool)
    mask[:, start:stop] = True
    return mask


@pytest.mark.parametrize("prediction, expected", [
    (columns(0, 4), ON_TARGET),
    (columns(2, 8), ON_TARGET),  # 8 target pixels, 8 other pixels: a tie stays on the target
    (columns(3, 10), ON_OTHER),  # 4 target pixels, 16 of the other object
    (columns(4, 6), UNDECIDED),  # background only
    (columns(0, 0), UNDECIDED),
    (None, UNDECIDED),
])
def test_identity_of_a_frame(prediction, expected):
    assert identity(prediction, labels(), TARGET) == expected


def test_a_video_score_counts_switches_lost_steps_and_ious():
    score = VideoScore("v", crossing_frames([(3, 4)]), seed_iou=1.0, crossings=1)
    hidden = labels()
    hidden[hidden == TARGET] = 0
    steps = [  # frame, mask, lost, labels
        (1, columns(0, 4), False, labels()),  # on target, IoU 1
        (2, columns(0, 2), False, labels()),  # on target, IoU 0.5
        (3, columns(6, 10), False, labels()),  # on the other object: a switch, at a crossing
        (4, columns(4, 6), False, labels()),  # background: undecided, the track is still "on the other"
        (5, columns(6, 10), False, labels()),  # still on the other: no new switch
        (6, columns(0, 4), False, labels()),  # back on the target
        (7, columns(6, 10), True, labels()),  # lost: no prediction, the target is visible -> IoU 0, undecided
        (8, columns(6, 10), False, labels()),  # on the other again: a second switch, not at a crossing
        (9, columns(6, 10), True, hidden),  # lost while the target is hidden: IoU 1
        (10, None, True, labels()),  # no track at all
    ]
    for frame, mask, lost, image in steps:
        score.add(frame, mask, lost, image, TARGET)
    assert score.ious == [1.0, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert score.switches == 2 and score.switches_at_crossings == 1 and score.frames_on_other == 3
    assert score.lost == 3 and score.at_crossing == [False, False, True, True] + [False] * 6
    assert score.mean_iou == pytest.approx(0.35)
    assert score.to_dict() == {"video": "v", "seed_iou": 1.0, "lost": 3, "switches": 2, "switches_at_crossings": 1,
                               "crossings": 1, "frames_on_other": 3, "frames": 10, "mean_iou": pytest.approx(0.35)}


def test_summary_over_all_videos_and_over_those_whose_seed_succeeded():
    good, bad, never = VideoScore("a", seed_iou=0.9, crossings=2), VideoScore("b", seed_iou=0.2), VideoScore("c")
    good.add(1, columns(0, 4), False, labels(), TARGET)
    good.add(2, columns(6, 10), False, labels(), TARGET)
    bad.add(1, columns(0, 2), True, labels(), TARGET)
    never.add(1, None, True, labels(), TARGET)
    summary = summarize([good, bad, never], 0.5)
    everything, succeeded = summary["all"], summary["seed_iou>=0.5"]
    assert everything["videos"] == 3 and everything["frames"] == 4
    assert everything["mean_iou"] == pytest.approx((0.5 + 0.0 + 0.0) / 3) and everything["lost_rate"] == 0.5
    assert everything["seed_iou"] == pytest.approx(0.55) and everything["identity_switches"] == 1
    assert everything["switches_per_crossing"] == 0.5 and everything["iou_apart"] == pytest.approx(0.25)
    assert succeeded["videos"] == 1 and succeeded["mean_iou"] == 0.5 and succeeded["lost_rate"] == 0.0


def test_crossings_are_the_stretches_where_bounding_circles_overlap():
    def moving(xs: list[float], extent: float) -> MovingObject:
        return MovingObject("circle", "red", "small", extent, extent, np.array([[x, 0.0] for x in xs]), 0)

    target = moving([0, 0, 0, 0, 0, 0], 2.0)
    passer = moving([10, 5, 3, 6, 3.5, 20], 2.0)  # overlaps (distance < 4) at frames 2 and 4
    far = moving([50] * 6, 2.0)
    events = crossings((target, passer, far), 0)
    assert [(c.start, c.end, c.other) for c in events] == [(2, 2, 1), (4, 4, 1)]


class Oracle:
    """A tracker that answers every frame with the true mask: a perfect track must score perfectly."""

    def __init__(self, video) -> None:
        self.video, self.frame = video, 0

    def start(self, image, mask) -> None:
        assert np.array_equal(image, self.video.frame(0))
        self.frame = 0

    def step(self, image):
        from lens_model.tracker import TrackStep

        self.frame += 1
        assert np.array_equal(image, self.video.frame(self.frame))
        mask = self.video.labels(self.frame) == self.video.target
        return TrackStep(mask, None, 1.0, not mask.any(), {"total": 1.0})

    def stop(self) -> None:
        pass


def test_a_perfect_track_scores_iou_one_without_switches(tmp_path):
    generate_videos(tmp_path, num_videos=2, num_frames=12, seed=1, size=64)
    for video in read_videos(tmp_path):
        score = track_video(predictor=None, tracker=Oracle(video), video=video, seed_from="gt")
        assert score.seed_iou == 1.0 and score.mean_iou == 1.0 and score.switches == 0 and len(score.ious) == 11


def test_the_tracking_task_of_the_evaluator(tmp_path, capsys):
    generate_videos(tmp_path, num_videos=2, num_frames=6, seed=2, size=64)
    out = tmp_path / "tracking.json"
    assert evaluate.main(["--task", "tracking", "--model", "tiny-random", "--data", str(tmp_path), "--seed-from", "gt",
                          "--frames", "4", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["all"]["videos"] == 2 and result["metrics"]["all"]["frames"] == 6
    assert result["metrics"]["all"]["seed_iou"] == 1.0 and result["random_weights"] is True
    assert result["run"]["mode"] == "box" and len(result["videos"]) == 2
    assert "mean IoU" in capsys.readouterr().out
    assert evaluate.main(["--task", "tracking", "--model", "tiny-random", "--data", str(tmp_path), "--track-mode",
                          "memory", "--output", str(out)]) == 2
    assert "memory_weights" in capsys.readouterr().err
