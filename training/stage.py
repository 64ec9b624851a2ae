"""What every training stage shares: the model and data config sections, batching, caches, export.

A stage (SFT, alignment, GRPO) declares a config dataclass deriving from ``StageConfig`` and writes
its loss; building the model, reading samples in a resumable order, turning samples into reasoner
inputs and writing the final, directly loadable model folder live here.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import ConcatDataset, DataLoader

from lens_model import sam_head
from lens_model.answer_format import format_answer, to_reasoner_frame
from lens_model.config import LensConfig
from lens_model.modeling import LensModel
from lens_model.processor import EncodedPrompts
from training.common import distributed
from training.common.rng import seed_everything
from training.common.sampler import ResumableSampler
from training.common.schema import TrainConfig
from training.data.registry import load_dataset
from training.data.sample import Sample


@dataclass
class ModelSection:
    # A LENS model to start from (built-in name, folder, hub id, or a previous stage's output) ...
    init: str = ""
    # ... or, when ``init`` is empty, a new LENS around a pretrained reasoner and SAM 2.
    reasoner: str = ""
    sam2_config: str = "configs/sam2/sam2_hiera_l.yaml"
    sam2_checkpoint: str = ""
    num_queries: int = 64
    prompt_collapse: str = "conv1d"
    query_positions: str = "sequential"
    template: str = "direct"
    min_pixels: int = 3136
    max_pixels: int = 1_000_000
    sam_image_size: int = 1024
    dtype: str = "float32"  # weights on load; mixed precision is the engine's bf16 switch
    gradient_checkpointing: bool = False


@dataclass
class DataSection:
    dataset: str = "synthetic"
    # Further datasets (same root and split) mixed into training, e.g. [refcoco+, refcocog];
    # evaluation uses ``dataset`` only.
    mix: list[str] = field(default_factory=list)
    root: str = MISSING
    split: str = "train"
    eval_split: str = "val"
    eval_limit: int = 64  # expressions scored at each periodic evaluation (0: skip evaluation)
    num_workers: int = 0
    cache_frozen_features: bool = True  # reuse frozen-encoder outputs per image (SAM 2, reasoner vision)
    cache_size: int = 512  # images kept in each feature cache


@dataclass
class StageConfig(TrainConfig):
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    eval_every_steps: int = 0  # 0: evaluate only at the end


def build_model(section: ModelSection) -> LensModel:
    """The stage's starting model, on CPU in ``section.dtype``; the engine moves it to its device."""
    from lens_model.hub import build_model as build_new
    from lens_model.hub import load_model

    overrides = dict(template=section.template)
    if section.init:
        model = load_model(section.init, device="cpu", dtype=section.dtype, **overrides)
    else:
        if not section.reasoner:
            raise ValueError("set model.init (a LENS model) or model.reasoner (a Qwen2.5-VL to build a new LENS)")
        config = LensConfig(
            reasoner=section.reasoner, num_queries=section.num_queries, prompt_collapse=section.prompt_collapse,
            query_positions=section.query_positions, sam2_config=section.sam2_config,
            sam2_checkpoint=section.sam2_checkpoint or None, min_pixels=section.min_pixels,
            max_pixels=section.max_pixels, sam_image_size=section.sam_image_size, **overrides,
        )
        from lens_model.hub import resolve_dtype

        model = build_new(config).to(resolve_dtype(section.dtype, torch.device("cpu")))
    if section.gradient_checkpointing:
        model.reasoner.gradient_checkpointing_enable()
    return model


def build_seeded_model(cfg: StageConfig) -> LensModel:
    """``build_model`` between two ``seed_everything(cfg.seed)``: a newly built model's weights come
    from the seed, and the training stream (data order, box jitter, dropout, sampling) starts from the
    seed whatever building drew. Loading a checkpoint first draws random weights for its architecture,
    so without the second seeding a stage's training would change with, say, the tokenizer's size."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model)
    seed_everything(cfg.seed)
    return model


def training_dataset(data: DataSection):
    """One sample per target with a random expression, drawn from the global ``random`` module, whose
    state every checkpoint saves, so a resumed run draws the same expressions. ``data.mix`` adds
    further datasets (the three RefCOCO datasets share COCO image ids, so per-image caches stay valid)."""
    parts = [load_dataset(name, data.root, data.split, per="ref") for name in (data.dataset, *data.mix)]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def batches(dataset, sampler: ResumableSampler, batch_size: int, num_workers: int) -> Iterator[list[Sample]]:
    """Endless batches of samples in the sampler's resumable order (broken entries are skipped)."""
    # A private generator: starting a loader iterator must not consume the global torch RNG (exact resume).
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=as_list,
                        generator=torch.Generator())
    while True:
        for items in loader:
            sampler.advance(len(items))
            kept = [s for s in items if s is not None]
            if kept:
                yield kept
        sampler.set_epoch(sampler.epoch + 1)


def as_list(items: list) -> list:
    """Collate function that keeps samples as a list (a named function, so spawned workers can pickle it)."""
    return items


class FeatureCache:
    """A small LRU of per-image tensors computed by frozen modules (keyed by dataset image id)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, object] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: str, compute):
        if self.size > 0 and key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = compute()
        if self.size > 0:
            self._items[key] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


@dataclass
class ReasonerBatch:
    """One image per row: prompts, the image encodings, and ground truth in both frames."""

    samples: list[Sample]
    prompts: EncodedPrompts
    grid_thw: torch.Tensor
    vision: list[torch.Tensor]
    resized_sizes: list[tuple[int, int]]
    sam_features: sam_head.SamImageFeatures | None  # None when the stage asked for none (SFT)

    def gt_boxes_in_reasoner_frame(self) -> list[tuple[float, float, float, float]]:
        return [to_reasoner_frame(s.box, (s.width, s.height), size) for s, size in zip(self.samples, self.resized_sizes)]

    def teacher_answers(self, template: str) -> list[str]:
        """Ground-truth completions in the exact format the model generates at inference."""
        return [format_answer(box, s.text, template, s.reasoning or "")
                for s, box in zip(self.samples, self.gt_boxes_in_reasoner_frame())]


class BatchEncoder:
    """Turns samples into reasoner inputs and SAM 2 features, caching what frozen modules compute."""

    def __init__(self, model: LensModel, cache_size: int, vision_frozen: bool, sam_encoder_frozen: bool) -> None:
        self.model = model
        self.vision_cache = FeatureCache(cache_size if vision_frozen else 0)
        self.sam_cache = FeatureCache(cache_size if sam_encoder_frozen else 0)

    def encode(self, samples: list[Sample], template: str, with_sam_features: bool = True) -> ReasonerBatch:
        model = self.model
        encoded = [model.encode_image(s.image) for s in samples]
        prompts = model.encode_prompts([s.text for s in samples], encoded, template)
        vision = []
        for sample, enc in zip(samples, encoded):
            vision.append(self.vision_cache.get(sample.image_id, lambda e=enc: self._vision(e)))
        features = None
        if with_sam_features:
            sam_levels = [self.sam_cache.get(s.image_id, lambda s=s: self._sam(s.image)) for s in samples]
            features = sam_head.SamImageFeatures([torch.cat(level) for level in zip(*(f.fpn for f in sam_levels))])
        grid = torch.cat([e.grid_thw for e in encoded]).to(model.device)
        return ReasonerBatch(samples, prompts, grid, vision, [e.resized_size for e in encoded], features)

    def _vision(self, encoded) -> torch.Tensor:
        with torch.no_grad() if self.vision_cache.size else contextlib.nullcontext():
            return self.model.vision_embeds(encoded)

    def _sam(self, image: np.ndarray) -> sam_head.SamImageFeatures:
        with torch.no_grad() if self.sam_cache.size else contextlib.nullcontext():
            return self.model.sam_features([image])


def frozen_parameters_gather(model: torch.nn.Module):
    """Under ZeRO-3 parameters are partitioned; gather them for a full save, else do nothing."""
    try:
        import deepspeed

        if any(hasattr(p, "ds_id") for p in model.parameters()):
            return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    except ImportError:
        pass
    return contextlib.nullcontext()


def export_model(model: LensModel, output_dir: str | Path, training_info: dict | None = None) -> None:
    """Write the final model into ``output_dir`` so ``LensModel.from_pretrained(output_dir)`` loads it."""
    with frozen_parameters_gather(model):
        if distributed.is_main():
            model.config.random_weights = False if training_info is not None else model.config.random_weights
            model.save_pretrained(str(output_dir))
            if training_info:
                import json

                (Path(output_dir) / "training_info.json").write_text(json.dumps(training_info, indent=2))
    distributed.barrier()


def segmentation_loss(low_res_logits: torch.Tensor, samples: list[Sample], weights) -> tuple[torch.Tensor, dict[str, float], list[float]]:
    """Mask loss of each row at its sample's original resolution (fp32), averaged over rows.

    Returns the differentiable total, the mean of each component, and each row's mask IoU.
    """
    from training.losses import mask_loss
    from training.metrics import expression_iou, mask_iou

    totals, sums, ious = [], {}, []
    for logits, sample in zip(low_res_logits, samples):
        full = sam_head.upsample_logits(logits[None], sample.height, sample.width)
        target = torch.from_numpy(sample.mask).to(full.device)[None].float()
        ignore = None if sample.ignore is None else torch.from_numpy(sample.ignore).to(full.device)[None]
        parts = mask_loss(full, target, ignore, weights)
        totals.append(parts["total"])
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        ious.append(expression_iou(*mask_iou((full[0] > 0).cpu().numpy(), sample.mask, sample.ignore)))
    means = {name: value / len(samples) for name, value in sums.items()}
    return torch.stack(totals).mean(), means, ious
