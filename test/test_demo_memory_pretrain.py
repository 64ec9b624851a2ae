"""Training the demo's SAM 2 memory modules on synthetic videos: the loss falls, only the video
tensors change, the model folder stays the demo's, the memory file loads into a tracker, and a
crashed run resumes exactly."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lens_model.checkpoints import load_model
from lens_model.sam_video import build_video_sam, video_keys
from lens_model.tracker import LensTracker, TrackerConfig
from recipes.demo import memory_pretrain
from recipes.demo.memory_pretrain import MEMORY_FILE
from training.common.logging import read_metrics
from training.data.videos import read_videos
from training.synthetic import generate_videos
from stage_fixtures import assert_exact_resume, run_stage

CONFIG = "recipes/demo/configs/memory.yaml"


def video_sets(root, train_videos: int, train_frames: int):
    """``root/train`` (seed 3) and ``root/eval`` (two 6-frame videos, seed 4), 112 px."""
    generate_videos(root / "train", num_videos=train_videos, num_frames=train_frames, seed=3, size=112)
    generate_videos(root / "eval", num_videos=2, num_frames=6, seed=4, size=112)
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return video_sets(tmp_path_factory.mktemp("videos"), 6, 8)


SMALL = ("clip_frames=4", "eval_frames=6", "engine.warmup_steps=0", "engine.lr=2e-3", "log.every_steps=4",
         "eval_every_steps=0")


def run(videos, out, *overrides: str) -> None:
    run_stage(memory_pretrain.main, CONFIG, videos / "train", out, *SMALL, f"eval_videos={videos / 'eval'}",
              "data.eval_limit=2", *overrides)


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory):
    """A training set of one 4-frame video, so every step trains on the same clip (clip_frames=4)."""
    return video_sets(tmp_path_factory.mktemp("one_clip"), 1, 4)


def test_memory_training_learns_only_the_video_tensors(one_clip, tmp_path):
    out = tmp_path / "out"
    run(one_clip, out, "max_steps=16")
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    # The loss on the one clip falls at every logging window. How fast depends on the demo's decoder: 16 -> 2.2
    # over 16 steps of 6 videos with the model shipped until the thirteenth round, 11.83 -> 11.78 on this clip
    # with the current one, whose object score the memory modules move far more slowly (RESEARCH_LOG.md).
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    evaluation = [r for r in read_metrics(out / "metrics.jsonl") if "eval_track_mean_iou" in r]
    assert len(evaluation) == 1 and 0.0 <= evaluation[0]["eval_track_mean_iou"] <= 1.0
    demo = load_model("lens-synth-demo")
    trained = load_file(out / "memory.safetensors")
    fresh = build_video_sam(demo).state_dict()
    assert trained.keys() == video_keys(build_video_sam(demo)).keys()
    assert any(not torch.equal(v, fresh[k]) for k, v in trained.items())
    exported = load_file(out / "model.safetensors")  # the demo model, unchanged and without memory
    assert all(torch.equal(v, demo.state_dict()[k]) for k, v in exported.items())
    tracker = LensTracker(load_model(str(out)), TrackerConfig(mode="memory"), memory_weights=out / "memory.safetensors")
    video = read_videos(one_clip / "eval")[0]
    tracker.start(video.frame(0), video.labels(0) == video.target)
    assert tracker.step(video.frame(1)).mask.shape == (112, 112)


def test_a_crashed_run_resumes_to_the_same_memory_weights(videos, tmp_path, monkeypatch):
    overrides = (*SMALL, f"eval_videos={videos / 'eval'}", "max_steps=6", "checkpoint.every_steps=3", "data.eval_limit=0")
    assert_exact_resume(memory_pretrain.main, CONFIG, videos / "train", tmp_path, monkeypatch, overrides,
                        weights=MEMORY_FILE)
