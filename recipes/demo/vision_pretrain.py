"""Dense object pretraining of the reasoner's vision tower: the offline stand-in for Qwen2.5-VL's pretrained ViT.

    python -m recipes.demo.vision_pretrain --config recipes/demo/configs/vision.yaml [key=value ...]

A from-scratch reasoner does not learn to localise from SFT alone (recipes/demo/RESEARCH_LOG.md): Qwen2.5-VL's
vision tower has no absolute position embedding and M-RoPE gives the language model relative
positions only, so an image token must itself say where its object is, which a pretrained tower
does and a random one does not. Here every merged image token (one per ``patch x merge`` pixel cell)
learns, through a linear probe shared by all tokens, to describe the target whose box centre lies in
its cell: objectness, the box in the image frame (absolute, in [0, 1]), the object's mean colour, its
silhouette (the mask inside the box at ``shape_cells`` x ``shape_cells``) and, with ``categories`` > 0,
its category (the dataset's ``category_id``, cross-entropy over ``categories`` ids: the silhouette alone
leaves the kind of object unlearned, recipes/demo/RESEARCH_LOG.md). Tokens of cells without a
target learn a box and a colour of zeros, so that an average over image tokens (a language model's
attention before it has learned where to look) carries the objects' boxes rather than noise; with
several targets in a cell, the largest wins. Everything but the category comes from the generic
sample (image, mask, box), so any target dataset works; the category needs ``meta["category_id"]``
(refer-style datasets: RefCOCO and the synthetic scenes).

Only the tower and the probe learn; the probe lives on the model as ``dense_probe`` during training
(so checkpoints and resume cover it) and is removed before the model is exported.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lens_model.modeling import LensModel
from lens_model.processor import token_at
from training.common.config import parse_cli, stage_main
from training.data.image_targets import ImageTargets
from training.data.registry import load_dataset
from training.data.sample import Sample
from training.batches import BatchEncoder
from training.common.engine import Engine
from training.loop import VISION_TOWER, train_stage, trainable_parameters
from training.stage_config import StageConfig
from training.starting_model import build_seeded_model

PROBE = "dense_probe"


@dataclass
class DenseLossWeights:
    objectness: float = 1.0
    box: float = 10.0  # L1 on [0, 1] coordinates
    colour: float = 5.0  # L1 on [0, 1] RGB
    shape: float = 3.0  # BCE per silhouette cell
    category: float = 1.0  # cross-entropy, with ``categories`` > 0


@dataclass
class VisionPretrainConfig(StageConfig):
    trainable: list[str] = field(default_factory=lambda: [VISION_TOWER, PROBE + "."])
    loss: DenseLossWeights = field(default_factory=DenseLossWeights)
    shape_cells: int = 6
    categories: int = 0  # number of category ids (ids 0 .. categories-1); 0: no category target

    def __post_init__(self) -> None:
        if self.categories < 0:
            raise ValueError(f"categories must be >= 0, got {self.categories}")


@dataclass
class DenseTargets:
    """Per-token targets of one image, tokens in the tower's raster order."""

    present: torch.Tensor  # (N,) bool
    box: torch.Tensor  # (N, 4) x1, y1, x2, y2 / image size
    colour: torch.Tensor  # (N, 3) mean RGB / 255
    shape: torch.Tensor  # (N, S*S) silhouette in the box
    category: torch.Tensor  # (N,) category id, -1 where unknown or no target


def silhouette(mask: np.ndarray, box: tuple[float, float, float, float], cells: int) -> np.ndarray:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    crop = mask[max(y1, 0):max(y2, y1 + 1), max(x1, 0):max(x2, x1 + 1)].astype(np.float32)
    if crop.size == 0:
        return np.zeros(cells * cells, np.float32)
    return (cv2.resize(crop, (cells, cells), interpolation=cv2.INTER_AREA) > 0.5).astype(np.float32).ravel()


def dense_targets(samples: list[Sample], grid: tuple[int, int], shape_cells: int, categories: int = 0) -> DenseTargets:
    """Targets for the tokens of the image that ``samples`` (all its targets) share; ``categories`` > 0
    requires every target's ``meta["category_id"]`` in [0, categories)."""
    rows, cols = grid
    height, width = samples[0].height, samples[0].width
    n = rows * cols
    targets = DenseTargets(torch.zeros(n, dtype=torch.bool), torch.zeros(n, 4), torch.zeros(n, 3),
                           torch.zeros(n, shape_cells * shape_cells), torch.full((n,), -1, dtype=torch.long))
    for sample in sorted(samples, key=lambda s: int(s.mask.sum())):  # the largest target is written last
        if not sample.mask.any():
            continue
        x1, y1, x2, y2 = sample.box
        k = token_at(((x1 + x2) / 2, (y1 + y2) / 2), (width, height), grid)
        targets.present[k] = True
        targets.box[k] = torch.tensor([x1 / width, y1 / height, x2 / width, y2 / height])
        targets.colour[k] = torch.from_numpy(sample.image[sample.mask].mean(0) / 255.0)
        targets.shape[k] = torch.from_numpy(silhouette(sample.mask, sample.box, shape_cells))
        if categories:
            category = sample.meta.get("category_id")
            if not isinstance(category, int) or not 0 <= category < categories:
                raise ValueError(f"{sample.sample_id}: category_id {category!r} is not an id in [0, {categories})")
            targets.category[k] = category
    return targets


def attach_probe(model: LensModel, shape_cells: int, categories: int = 0) -> nn.Linear:
    hidden = model.reasoner.config.text_config.hidden_size
    probe = nn.Linear(hidden, 1 + 4 + 3 + shape_cells**2 + categories)
    model.add_module(PROBE, probe)
    return probe


def detach_probe(model: LensModel) -> None:
    delattr(model, PROBE)


def dense_losses(model: LensModel, images: list[list[Sample]], cfg: VisionPretrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    outputs, targets = [], []
    for samples in images:
        encoded = model.encode_image(samples[0].image)
        outputs.append(getattr(model, PROBE)(model.vision_embeds(encoded)))
        targets.append(dense_targets(samples, model.processor.token_grid(encoded.grid_thw[0]), cfg.shape_cells,
                                     cfg.categories))
    out = torch.cat(outputs).float()
    present = torch.cat([t.present for t in targets]).to(out.device)
    box, colour, shape, category = (torch.cat([getattr(t, name) for t in targets]).to(out.device)
                                    for name in ("box", "colour", "shape", "category"))
    shape_end = 8 + cfg.shape_cells**2
    logits, pred_box, pred_colour, pred_shape = out[:, 0], out[:, 1:5], out[:, 5:8], out[:, 8:shape_end]
    pred_category, known = out[:, shape_end:], category >= 0

    def split_mean(per_token: torch.Tensor) -> torch.Tensor:
        """Mean over target tokens plus mean over empty ones (empty tokens learn zeros), so that neither
        outweighs the other however sparse the scene."""
        empty = ~present
        return sum(per_token[group].mean() for group in (present, empty) if group.any())

    parts = {
        "objectness": F.binary_cross_entropy_with_logits(logits, present.float()),
        "box": split_mean((pred_box - box).abs().mean(-1)),
        "colour": split_mean((pred_colour - colour).abs().mean(-1)),
        "shape": F.binary_cross_entropy_with_logits(pred_shape[present], shape[present]) if present.any() else out.sum() * 0,
    }
    w = cfg.loss
    loss = (w.objectness * parts["objectness"] + w.box * parts["box"] + w.colour * parts["colour"]
            + w.shape * parts["shape"])
    if cfg.categories:
        parts["category"] = F.cross_entropy(pred_category[known], category[known]) if known.any() else out.sum() * 0
        loss = loss + w.category * parts["category"]
    size = float(np.mean([s[0].width + s[0].height for s in images]) / 2)
    shape_hit = ((pred_shape > 0) & (shape > 0.5))[present].sum()
    shape_union = ((pred_shape > 0) | (shape > 0.5))[present].sum()
    metrics = {
        "loss": float(loss.detach()),
        **{f"loss_{k}": float(v.detach()) for k, v in parts.items()},
        "objectness_acc": float(((logits > 0) == present).float().mean()),
        "box_l1_px": float((pred_box - box).abs()[present].mean().detach()) * size,
        "colour_l1": float((pred_colour - colour).abs()[present].mean().detach()),
        "shape_iou": float(shape_hit.sum() / shape_union.clamp(min=1)),
    }
    if cfg.categories and known.any():
        metrics["category_acc"] = float((pred_category[known].argmax(-1) == category[known]).float().mean())
    return loss, metrics


def dense_loss(engine: Engine, encoder: BatchEncoder, images: list[list[Sample]], cfg: VisionPretrainConfig):
    del engine  # the tower and its probe are run directly, one image at a time (not under ZeRO-3)
    return dense_losses(encoder.model, images, cfg)


@torch.no_grad()
def dense_eval(model: LensModel, cfg: VisionPretrainConfig, batch_size: int = 16) -> dict[str, float]:
    """The dense metrics on the first ``data.eval_limit`` images of the eval split (micro-averaged over batches)."""
    images = ImageTargets(load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.eval_split, per="ref"))
    items = [item for item in (images[i] for i in range(min(cfg.data.eval_limit, len(images)))) if item is not None]
    model.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        _, metrics = dense_losses(model, chunk, cfg)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value * len(chunk)
    return {f"eval_{k}": v / max(len(items), 1) for k, v in totals.items()}


def train(cfg: VisionPretrainConfig) -> None:
    model = build_seeded_model(cfg)
    attach_probe(model, cfg.shape_cells, cfg.categories)
    params = trainable_parameters(model, list(cfg.trainable))
    train_stage(cfg, "vision_pretrain", model, params, partial(dense_loss, cfg=cfg), evaluate=dense_eval,
                   before_export=detach_probe,
                   dataset=ImageTargets(load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split, per="ref")))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(argv, VisionPretrainConfig,
                    description="Dense object pretraining of the reasoner's vision tower (demo stand-in for a pretrained ViT)")

    def run() -> int:
        train(cfg)
        return 0

    return stage_main("vision_pretrain", run)


if __name__ == "__main__":
    sys.exit(main())
