"""Synthetic tracking videos (python -m training.synthetic --videos N): determinism, per-frame masks
that match the painted pixels, motion, crossings and occlusion, a first-frame query with one
referent, and a reader that refuses a malformed folder."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from test_data_synthetic import referents
from training.data.synthetic_scenes import COLORS
from training.data.videos import read_videos
from training.synthetic import generate_videos, main

FRAMES = 40


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    generate_videos(root, num_videos=6, num_frames=FRAMES, seed=5, size=96)
    return root


def digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.relative_to(folder).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()


def index(root: Path) -> dict:
    return json.loads((root / "synthetic_videos" / "videos.json").read_text())


def test_the_same_seed_gives_the_same_bytes(generated, tmp_path):
    main(["--out", str(tmp_path / "a"), "--videos", "6", "--frames", str(FRAMES), "--seed", "5", "--size", "96"])
    assert digest(tmp_path / "a" / "synthetic_videos") == digest(generated / "synthetic_videos")
    generate_videos(tmp_path / "b", num_videos=6, num_frames=FRAMES, seed=6, size=96)
    assert digest(tmp_path / "b" / "synthetic_videos") != digest(generated / "synthetic_videos")


def test_labels_are_the_visible_pixels_of_each_object(generated):
    for video, entry in zip(read_videos(generated), index(generated)["videos"]):
        colors = {o["label"]: COLORS[o["color"]] for o in entry["objects"]}
        for t in (0, FRAMES // 2, FRAMES - 1):
            frame, labels = video.frame(t), video.labels(t)
            assert frame.shape == (96, 96, 3) and labels.shape == (96, 96)
            for label, color in colors.items():
                assert (frame[labels == label] == color).all()
            assert set(np.unique(labels)) <= {0, *colors}


def test_shapes_move_cross_and_hide_one_another(generated):
    videos = index(generated)["videos"]
    for entry, video in zip(videos, read_videos(generated)):
        for obj in entry["objects"]:
            centers = np.array(obj["centers"])
            assert centers.shape == (FRAMES, 2) and np.abs(np.diff(centers, axis=0)).max() > 0
            steps = np.linalg.norm(np.diff(centers, axis=0), axis=1)
            if obj["label"] != entry["crosser"]:  # the crosser goes as fast as meeting the target takes
                assert steps.max() <= 0.02 * 96 + 0.02  # MAX_SPEED of the side per frame (centres rounded)
        assert entry["crossings"], "the crosser is aimed at the target"
        assert all(0 <= c["start"] <= c["end"] < FRAMES and c["other"] != entry["target"] for c in entry["crossings"])
        target = [o for o in entry["objects"] if o["label"] == entry["target"]][0]
        visible = [int((video.labels(t) == entry["target"]).sum()) for t in range(FRAMES)]
        assert visible[0] > 0
        entry["hidden"] = min(visible) < max(visible) and target["depth"] < max(o["depth"] for o in entry["objects"])
    assert any(entry["hidden"] for entry in videos)  # some target is partly occluded at some frame


def test_the_query_has_exactly_one_referent_on_the_first_frame(generated):
    for entry in index(generated)["videos"]:
        objects = [{"shape": o["shape"], "color": o["color"], "size": o["size"], "center": o["centers"][0]}
                   for o in entry["objects"]]
        assert referents(entry["query"], objects) == [entry["target"] - 1], entry["query"]


@pytest.mark.parametrize("change, message", [
    (lambda i: i.update(format="other"), "not a version-1"),
    (lambda i: i.update(frames=1), "'frames'"),
    (lambda i: i["videos"][0].update(id="../../etc"), "six digits"),
    (lambda i: i["videos"][0].update(target=0), "'target'"),
    (lambda i: i["videos"][0].update(crossings=[{"start": 0, "end": 10**6, "other": 1}]), "'crossings'"),
    (lambda i: i["videos"][0].update(query=None), "'query'"),
])
def test_a_malformed_index_is_refused(generated, tmp_path, change, message):
    data = index(generated)
    change(data)
    (tmp_path / "videos.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_videos(tmp_path)


def test_frames_outside_the_video_are_refused(generated):
    video = read_videos(generated)[0]
    with pytest.raises(IndexError):
        video.frame(FRAMES)


def test_every_pixel_shows_the_highest_shape_covering_it():
    from training.data.synthetic_motion import sample_video
    from training.data.synthetic_scenes import make_object

    overlapping = 0
    for seed in range(3):
        video = sample_video(np.random.default_rng(seed), 96, 30, margin=8.0)
        depths = np.array([o.depth for o in video.objects])
        for t in range(30):
            full = np.stack([make_object(o.shape, o.color, o.size, tuple(o.centers[t]), o.radius, 96).mask
                             for o in video.objects])
            covered = full.any(axis=0)
            highest = np.argmax(np.where(full, depths[:, None, None], -1), axis=0)
            assert np.array_equal(video.labels[t][covered], highest[covered] + 1)
            assert (video.labels[t][~covered] == 0).all()
            overlapping += int((full.sum(axis=0) > 1).any())
    assert overlapping > 0
