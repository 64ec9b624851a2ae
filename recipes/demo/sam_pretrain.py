"""Pretrain a LENS model's SAM 2 with its native box prompts: the offline stand-in for SAM 2 weights.

    python -m recipes.demo.sam_pretrain --config recipes/demo/configs/sam.yaml [key=value ...]

There is no pretrained SAM 2 without a network, and alignment keeps SAM 2 frozen, so the demo first
teaches its tiny SAM 2 (image encoder, prompt encoder, mask decoder) to segment the object inside a
box: each target's ground-truth box, its sides jittered by up to ``box_jitter`` of the box size,
goes through ``sam_prompt_encoder(boxes=...)`` into the mask decoder (the path LENS uses, with box
embeddings instead of context-module prompts); the loss is BCE + Dice at the original resolution.
A training item is one image with every one of its targets, as SAM is trained: the image is encoded
once, and prompts on the same image that must give different masks are what teaches the decoder
to follow the box (one random target per image leaves it stuck at "every object", IoU ~0.23).
LENS prompts the decoder with the context module's tokens (16 in the demo), never with a corner pair,
the only prompt a decoder trained on boxes alone has seen: with ``one_token_share`` of the boxes
prompted by one token, the sum of their two corner embeddings, the decoder also learns to read where
from a prompt of another form, and alignment leaves its "every object" plateau above it
(recipes/demo/RESEARCH_LOG.md, thirteenth round).
Evaluation prompts with the exact ground-truth boxes and reports the mask gIoU and cIoU. Whether
the decoder leaves that plateau at all depends on SAM 2's initial weights, so the run exits with
status 1 (after exporting) when the final gIoU stays below ``min_eval_giou``: the later stages would
train on a SAM 2 that ignores its prompts. Config, checkpoints, resume, logging and export are those
of every stage (``training.loop``).
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from functools import partial

import torch

from lens_model import sam_head
from lens_model.modeling import LensModel
from training.common import distributed
from training.common.config import parse_cli, stage_main
from training.data.image_targets import ImageTargets
from training.data.registry import load_dataset
from training.data.sample import Sample
from training.batches import BatchEncoder
from training.common.engine import Engine
from training.loop import meets_minimum, train_stage, trainable_parameters
from training.losses import MaskLossWeights, segmentation_loss
from training.metrics import SegmentationMeter
from training.stage_config import StageConfig
from training.starting_model import build_seeded_model


@dataclass
class SamPretrainConfig(StageConfig):
    trainable: list[str] = field(default_factory=lambda: ["sam."])
    loss: MaskLossWeights = field(default_factory=MaskLossWeights)
    box_jitter: float = 0.1  # each box side moves by up to this fraction of the box's width/height
    min_eval_giou: float = 0.0  # fail when the final box-prompted gIoU is below this (0: no check)
    # Share of boxes prompted with ONE token, the sum of the box's two corner embeddings: the decoder then
    # reads where from prompts other than a corner pair, as LENS's context tokens are (thirteenth round).
    one_token_share: float = 0.0


def sam_boxes(samples: list[Sample], image_size: int, jitter: float) -> torch.Tensor:
    """(B, 4) x1, y1, x2, y2 in SAM 2's input frame; sides jittered by the global torch RNG."""
    boxes = torch.tensor([s.box for s in samples], dtype=torch.float32)
    if jitter > 0:
        extent = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + (torch.rand(boxes.shape) * 2 - 1) * jitter * extent
    scale = torch.tensor([[image_size / s.width, image_size / s.height] * 2 for s in samples])
    return (boxes * scale).clamp(0, image_size)


def box_prompted_logits(model: LensModel, images: list, boxes: torch.Tensor, image_of_box: torch.Tensor | None = None,
                        one_token: torch.Tensor | None = None) -> torch.Tensor:
    """Low-resolution mask logits (B, S/4, S/4) for B boxes; box i is on ``images[image_of_box[i]]``
    (default: one box per image). Boxes where ``one_token`` is set are prompted by one token, the sum of
    their two corner embeddings, instead of the corner pair."""
    features = model.sam_features(images)
    if one_token is None:
        if image_of_box is not None:
            features = features.select(image_of_box.to(model.device))
        return sam_head.decode_box_masks(model.sam, features, boxes.to(model.device))[0]
    image_of_box = torch.arange(len(boxes)) if image_of_box is None else image_of_box
    corners, _ = model.sam.sam_prompt_encoder(points=None, boxes=boxes.float().to(model.device), masks=None)
    corners = corners.to(features.fpn[0].dtype)
    parts, order = [], []
    for chosen, prompts in ((~one_token, corners), (one_token, corners.sum(1, keepdim=True))):
        index = chosen.nonzero().flatten()
        if len(index):
            selected = features.select(image_of_box[index].to(model.device))
            parts.append(sam_head.decode_masks(model.sam, selected, prompts[index.to(model.device)], repeat_image=False)[0])
            order.append(index)
    return torch.cat(parts)[torch.argsort(torch.cat(order)).to(model.device)]


def sam_loss(engine: Engine, encoder: BatchEncoder, images: list[list[Sample]], cfg: SamPretrainConfig):
    del engine  # SAM 2 is prompted with boxes directly, outside LensModel.forward (not under ZeRO-3)
    model = encoder.model
    samples = [s for targets in images for s in targets]
    image_of_box = torch.tensor([i for i, targets in enumerate(images) for _ in targets])
    boxes = sam_boxes(samples, model.config.sam_image_size, cfg.box_jitter)
    # Drawn only when asked for, so that a run without one-token prompts keeps its random stream.
    one_token = torch.rand(len(samples)) < cfg.one_token_share if cfg.one_token_share > 0 else None
    logits = box_prompted_logits(model, [targets[0].image for targets in images], boxes, image_of_box, one_token)
    loss, parts, ious = segmentation_loss(logits, samples, cfg.loss)
    metrics = {"loss": float(loss.detach()), **{f"loss_{k}": v for k, v in parts.items() if k != "total"},
               "train_iou": sum(ious) / len(ious)}
    return loss, metrics


@torch.no_grad()
def box_prompt_eval(model: LensModel, cfg: StageConfig, batch_size: int = 16) -> dict[str, float]:
    """Mask gIoU/cIoU with exact ground-truth box prompts on ``data.eval_limit`` targets of the eval split."""
    # A private RNG picks each target's expression, so evaluating leaves the training RNG alone.
    dataset = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.eval_split, per="ref", rng=random.Random(0))
    single = [i for i, target in enumerate(dataset.targets) if target.referents == 1]  # a box prompt is one object
    indices = single[distributed.rank():cfg.data.eval_limit:distributed.world_size()]
    samples = [s for s in (dataset[i] for i in indices) if s is not None]
    model.eval()
    meter = SegmentationMeter()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        logits = box_prompted_logits(model, [s.image for s in chunk], sam_boxes(chunk, model.config.sam_image_size, 0.0))
        for sample, low_res in zip(chunk, logits):
            mask = sam_head.upsample_logits(low_res[None], sample.height, sample.width)[0] > 0
            meter.add_mask(sample.sample_id, mask.cpu().numpy(), sample.mask, sample.ignore)
    merged = SegmentationMeter()
    for shard in distributed.all_gather_object(meter):
        merged.merge(shard)
    summary = merged.summary()
    return {"eval_box_prompt_gIoU": float(summary["gIoU"]), "eval_box_prompt_cIoU": float(summary["cIoU"])}


def train(cfg: SamPretrainConfig) -> dict[str, float]:
    """Train and export; returns the last evaluation's metrics (empty without evaluation)."""
    model = build_seeded_model(cfg)
    params = trainable_parameters(model, list(cfg.trainable))
    return train_stage(cfg, "sam_pretrain", model, params, partial(sam_loss, cfg=cfg), evaluate=box_prompt_eval,
                          dataset=ImageTargets(load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split, per="ref")))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(argv, SamPretrainConfig, description="Pretrain SAM 2 with box prompts (demo stand-in for SAM 2 weights)")
    advice = (f"SAM 2's mask decoder stayed on its 'every object' plateau, and alignment cannot work on top of it. "
              f"The model is exported to {cfg.output_dir} all the same. Whether the decoder leaves the plateau "
              f"depends on SAM 2's initial weights: build the untrained model with another `python -m "
              f"recipes.demo.init_model --sam-seed` and train again.")
    return stage_main("sam_pretrain", lambda: 0 if meets_minimum(
        "sam_pretrain", train(cfg), "eval_box_prompt_gIoU", cfg.min_eval_giou, advice) else 1)


if __name__ == "__main__":
    sys.exit(main())
