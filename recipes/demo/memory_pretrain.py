"""Train the demo's SAM 2 memory modules on synthetic videos, for memory-mode tracking with lens-synth-demo.

    python -m training.synthetic --out data/demo_videos --videos 400 --frames 16 --size 112 --seed 11
    python -m training.synthetic --out data/demo_videos_eval --videos 10 --frames 100 --seed 12
    python -m recipes.demo.memory_pretrain --config recipes/demo/configs/memory.yaml [key=value ...]

A released checkpoint's memory weights come from the official SAM 2 checkpoint it was built on; the
demo's SAM 2 was trained from nothing (``sam_pretrain``) and has none. This stage builds SAM 2's
video machinery around the demo's frozen SAM 2 (``lens_model.sam_video``) and trains only the
tensors video tracking reads (memory attention, memory encoder, object pointers, ...), as SAM 2 is
trained on video: a clip's first frame is seeded with the target's true mask, each later frame is
propagated from the memory of the earlier ones, and its mask is scored with BCE + Dice against the
target's visible mask, plus SAM 2's object-score loss (BCE of its "object visible" logit); gradients
flow back through the whole clip. The object-score term is what starts it: the demo's decoder never
learnt object scores, judges every frame empty at first, and an empty frame's mask is a constant
that passes no gradient. The evaluation is the tracking evaluation (``training.track_eval``) in
memory mode, seeded from the true mask, on ``eval_videos``.

It writes ``OUTPUT/memory.safetensors`` for ``LensTracker(model, TrackerConfig(mode="memory"),
memory_weights=...)``; the exported model folder next to it is the demo model unchanged.
Config, checkpoints, resume and logging are those of every stage (``training.loop``).
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lens_model.modeling import LensModel
from lens_model.predictor import LensPredictor
from lens_model.sam_video import VideoTrack, build_video_sam, save_video_weights, set_video_training, video_parameters
from lens_model.tracker import TrackerConfig
from training.batches import BatchEncoder
from training.common.config import parse_cli, stage_main
from training.common.engine import Engine
from training.data.videos import Video, read_videos
from training.loop import train_stage
from training.losses import MaskLossWeights, mask_loss
from training.stage_config import StageConfig
from training.starting_model import build_seeded_model
from training.track_eval import run_tracking
from training.track_metrics import summarize

VIDEO_SAM = "video_sam"  # the video SAM 2's attribute on the model while it trains
MEMORY_FILE = "memory.safetensors"


@dataclass
class MemoryPretrainConfig(StageConfig):
    loss: MaskLossWeights = field(default_factory=MaskLossWeights)
    clip_frames: int = 8  # frames per training clip: the seed frame and the ones propagated from it
    eval_videos: str = ""  # videos of the tracking evaluation (python -m training.synthetic --videos N)
    eval_frames: int = 100  # frames of each evaluation video that are tracked


@dataclass(frozen=True)
class Clip:
    frames: list[np.ndarray]
    masks: list[np.ndarray]  # the target's visible pixels, per frame


class VideoClips(Dataset):
    """Consecutive, non-overlapping clips of ``length`` frames from every video of a folder."""

    def __init__(self, videos: list[Video], length: int) -> None:
        if length < 2:
            raise ValueError(f"clip_frames must be at least 2 (a seed frame and one to propagate), got {length}")
        self.items = [(video, start) for video in videos for start in range(0, video.num_frames - length + 1, length)]
        self.length = length
        if not self.items:
            raise ValueError(f"no video is {length} frames long")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Clip:
        video, start = self.items[index]
        frames = range(start, start + self.length)
        return Clip([video.frame(t) for t in frames], [video.labels(t) == video.target for t in frames])


def clip_loss(model: LensModel, clip: Clip, weights: MaskLossWeights) -> tuple[torch.Tensor, list[float]]:
    """Seed on the clip's first frame, propagate through the rest: the mean mask loss and each frame's IoU."""
    video = getattr(model, VIDEO_SAM)
    track = VideoTrack(video)
    pixels = model.sam_pixels(clip.frames, torch.float32)
    with torch.no_grad():  # the image path is frozen: its features need no graph
        frames = [track.encode(pixels[t : t + 1]) for t in range(len(clip.frames))]
    track.seed(frames[0], torch.from_numpy(clip.masks[0]).to(model.device))
    losses, ious = [], []
    for frame, mask in zip(frames[1:], clip.masks[1:]):
        propagated = track.propagate(frame)
        full = torch.nn.functional.interpolate(propagated.low_res_logits[None, None], size=mask.shape, mode="bilinear",
                                               align_corners=False)[0]
        target = torch.from_numpy(mask).to(full.device)[None].float()
        visible = torch.tensor(float(mask.any()), device=full.device)
        # SAM 2's object-score loss: while SAM 2 judges the object absent its mask is a constant, and
        # only this term reaches the memory modules.
        losses.append(mask_loss(full, target, None, weights)["total"]
                      + torch.nn.functional.binary_cross_entropy_with_logits(propagated.object_score.float(), visible))
        predicted = full[0] > 0
        union = (predicted | target[0].bool()).sum()
        ious.append(1.0 if union == 0 else float((predicted & target[0].bool()).sum() / union))
    return torch.stack(losses).mean(), ious


def memory_loss(engine: Engine, encoder: BatchEncoder, clips: list[Clip], cfg: MemoryPretrainConfig):
    del engine  # the video SAM 2 runs outside LensModel.forward (a torch engine only)
    results = [clip_loss(encoder.model, clip, cfg.loss) for clip in clips]
    loss = torch.stack([value for value, _ in results]).mean()
    ious = [iou for _, frame_ious in results for iou in frame_ious]
    return loss, {"loss": float(loss.detach()), "train_iou": sum(ious) / len(ious)}


def train_modes(model: LensModel) -> None:
    """Everything frozen in eval mode; only the video tensors train (memory attention dropout on)."""
    model.eval()
    set_video_training(getattr(model, VIDEO_SAM), True)


def tracking_eval(model: LensModel, cfg: MemoryPretrainConfig) -> dict[str, float]:
    """Memory-mode tracking, seeded from the true mask, on ``data.eval_limit`` of ``eval_videos``."""
    videos = read_videos(cfg.eval_videos)[: cfg.data.eval_limit]
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / MEMORY_FILE
        save_video_weights(getattr(model, VIDEO_SAM), weights)
        scores, _ = run_tracking(LensPredictor(model), videos, TrackerConfig(mode="memory"), weights, "gt",
                                 cfg.eval_frames, progress=False)
    totals = summarize(scores, 0.5)["all"]
    return {f"eval_track_{key}": float(totals[key]) for key in ("mean_iou", "iou_apart", "iou_at_crossings", "lost_rate")
            if totals[key] is not None}


def export_memory(model: LensModel, output_dir: str) -> None:
    """Write the video tensors, then detach the video SAM 2 so the model folder is the model's own."""
    save_video_weights(getattr(model, VIDEO_SAM), Path(output_dir) / MEMORY_FILE)
    delattr(model, VIDEO_SAM)


def train(cfg: MemoryPretrainConfig) -> dict[str, float]:
    model = build_seeded_model(cfg)
    setattr(model, VIDEO_SAM, build_video_sam(model))
    clips = VideoClips(read_videos(cfg.data.root), cfg.clip_frames)
    return train_stage(cfg, "memory_pretrain", model, video_parameters(getattr(model, VIDEO_SAM)),
                       partial(memory_loss, cfg=cfg), train_modes=train_modes, evaluate=tracking_eval,
                       before_export=partial(export_memory, output_dir=cfg.output_dir), dataset=clips)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(argv, MemoryPretrainConfig, description="Train the demo's SAM 2 memory modules on synthetic videos")

    def run() -> int:
        train(cfg)
        return 0

    return stage_main("memory_pretrain", run)


if __name__ == "__main__":
    sys.exit(main())
