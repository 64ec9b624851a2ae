"""Stage 1, alignment: teach the context queries and connector to prompt SAM 2.

    python -m training.align --config training/configs/align_tiny.yaml [key=value ...]
    deepspeed --num_gpus 8 -m training.align --config training/configs/align_qwen2p5_3b.yaml

The reasoner and SAM 2 are frozen (``trainable`` selects what learns, by parameter-name prefix).
Each sample is teacher-forced: prompt + the ground-truth answer written in the exact format the model
produces at inference (JSON box in the reasoner's frame, or think/answer with the sample's reasoning)
+ the M queries; the loss is BCE + Dice of SAM 2's mask at the original resolution. Frozen encoder
outputs (SAM 2 image features, reasoner vision features) are cached per image.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from training.common import distributed
from training.common.checkpoint import CheckpointManager, TrainerState
from training.common.config import parse_cli, save_config
from training.common.engine import build_engine
from training.common.logging import RunLogger
from training.common.rng import seed_everything
from training.common.sampler import ResumableSampler
from training.losses import MaskLossWeights
from training.stage import (BatchEncoder, StageConfig, batches, build_model, export_model, segmentation_loss,
                            training_dataset)


@dataclass
class AlignConfig(StageConfig):
    # Parameter-name prefixes that learn; the paper trains only the context module.
    trainable: list[str] = field(default_factory=lambda: ["context."])
    loss: MaskLossWeights = field(default_factory=MaskLossWeights)


def trainable_parameters(model: torch.nn.Module, prefixes: list[str]) -> list[torch.nn.Parameter]:
    chosen = [p for name, p in model.named_parameters() if name.startswith(tuple(prefixes))]
    if not chosen:
        raise ValueError(f"no parameter names start with any of {prefixes}")
    return chosen


def frozen(model: torch.nn.Module, prefix: str, trainable: list[str]) -> bool:
    """Whether no trainable prefix touches the module at ``prefix``."""
    return not any(t.startswith(prefix) or prefix.startswith(t) for t in trainable)


def align_step(model, encoder: BatchEncoder, samples, cfg: AlignConfig):
    template = model.config.template
    batch = encoder.encode(samples, template)
    ids, mask = model.encode_completions(batch.teacher_answers(template))
    _, states = model.sequence_forward(batch.prompts, batch.grid_thw, batch.vision, ids, mask, with_logprobs=False)
    logits, _ = model.segment(states, batch.sam_features, repeat_image=False)
    loss, parts, ious = segmentation_loss(logits, samples, cfg.loss)
    metrics = {"loss": float(loss.detach()), **{f"loss_{k}": v for k, v in parts.items() if k != "total"},
               "train_iou": sum(ious) / len(ious)}
    return loss, metrics


def periodic_eval(model, cfg: AlignConfig) -> dict[str, float]:
    from training.data.registry import load_dataset
    from training.evaluate import run_evaluation
    from training.metrics import SegmentationMeter

    dataset = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.eval_split, per="sentence")
    model.eval()
    meter = run_evaluation(model, dataset, SegmentationMeter(), limit=cfg.data.eval_limit,
                           rank=distributed.rank(), world_size=distributed.world_size(), progress=False)
    merged = SegmentationMeter()
    for shard in distributed.all_gather_object(meter):  # collective: every rank takes part
        merged.merge(shard)
    summary = merged.summary()
    return {f"eval_{k}": float(v) for k, v in summary.items() if isinstance(v, float)}


def train(cfg: AlignConfig) -> None:
    seed_everything(cfg.seed)
    model = build_model(cfg.model)
    params = trainable_parameters(model, list(cfg.trainable))
    engine = build_engine(model, params, cfg.engine, total_steps=cfg.max_steps)
    model.train()
    # Frozen parts stay in eval mode: the authors' frozen SAM 2 uses the eval-mode multimask fallback.
    for name, module in (("sam.", model.sam), ("reasoner.", model.reasoner)):
        if frozen(model, name, list(cfg.trainable)):
            module.eval()
    encoder = BatchEncoder(model, cfg.data.cache_size if cfg.data.cache_frozen_features else 0,
                           vision_frozen=frozen(model, "reasoner.model.visual.", list(cfg.trainable)),
                           sam_encoder_frozen=frozen(model, "sam.image_encoder.", list(cfg.trainable)))
    dataset = training_dataset(cfg.data)
    sampler = ResumableSampler(len(dataset), seed=cfg.seed)
    checkpoints = CheckpointManager(cfg.output_dir, keep_last=cfg.checkpoint.keep_last)
    state = checkpoints.resume(engine, cfg.checkpoint.resume) or TrainerState()
    if state.data is not None:
        sampler.load_state(state.data)
    if distributed.is_main():
        save_config(cfg, cfg.output_dir)
    logger = RunLogger(cfg.output_dir, cfg.max_steps, start_step=state.global_step, every_steps=cfg.log.every_steps,
                       tensorboard=cfg.log.tensorboard, progress_bar=cfg.log.progress_bar, desc="align")
    stream = batches(dataset, sampler, cfg.engine.micro_batch_size, cfg.data.num_workers)
    step_metrics: dict[str, float] = {}
    step_samples = 0
    with logger:
        while state.global_step < cfg.max_steps:
            samples = next(stream)
            with engine.autocast():
                loss, metrics = align_step(model, encoder, samples, cfg)
            engine.backward(loss)
            for key, value in metrics.items():
                step_metrics[key] = step_metrics.get(key, 0.0) + value / cfg.engine.grad_accum_steps
            step_samples += len(samples)
            if not engine.step():
                continue
            state.global_step += 1
            state.data = sampler.state()
            logger.step(state.global_step, step_metrics, num_samples=step_samples, lr=engine.lr)
            step_metrics, step_samples = {}, 0
            if cfg.eval_every_steps and state.global_step % cfg.eval_every_steps == 0 and cfg.data.eval_limit:
                logger.write(state.global_step, periodic_eval(model, cfg))
                model.train()
            if cfg.checkpoint.every_steps and state.global_step % cfg.checkpoint.every_steps == 0:
                checkpoints.save(engine, state, cfg)
        checkpoints.save(engine, state, cfg)
        if cfg.data.eval_limit:
            logger.write(state.global_step, periodic_eval(model, cfg))
    export_model(model, cfg.output_dir, {"stage": "align", "steps": state.global_step, "finished": time.time()})


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(argv, AlignConfig, description="LENS stage 1: alignment of the context module")
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
