"""The training loop every stage runs: SFT, alignment, GRPO and the demo recipe's pretraining stages.

    model = build_seeded_model(cfg)
    train_stage(cfg, "align", model, trainable_parameters(model, cfg.trainable), align_loss)

A stage supplies the loss of one micro-batch. One optimizer step takes ``engine.grad_accum_steps``
micro-batches. A stage that learns from its own samples (GRPO) also supplies ``rollout``, which
turns a micro-batch of samples into what its loss reads, and may take ``passes`` optimizer steps
on one buffer of rollouts; checkpoints fall only between buffers, so a resumed run never
re-samples half of one. The rest is the same for every stage and lives here: the engine, train and
eval modes of frozen parts, feature caches, the resumable data order, atomic checkpoints and exact
resume, logging (the loss terms, learning rate, gradient norm, throughput), periodic and final
evaluation, and the export of a directly loadable model.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from lens_model.modeling import LensModel
from lens_model.predictor import LensPredictor
from training.batches import BatchEncoder, batches, training_dataset
from training.common import distributed
from training.common.checkpoint import CheckpointManager, TrainerState
from training.common.config import save_config
from training.common.engine import Engine, ParamSpec, build_engine
from training.common.logging import RunLogger
from training.common.sampler import ResumableSampler
from training.data.sample import Sample
from training.export import export_model
from training.stage_config import StageConfig

VISION_TOWER = "reasoner.model.visual."
SAM_IMAGE_ENCODER = "sam.image_encoder."

# The loss of one micro-batch: (engine, encoder, item) -> differentiable loss and float metrics.
# ``engine(...)`` runs LensModel.forward (where ZeRO-3 gathers parameters); ``encoder.model`` is
# the LensModel itself, for its encoding helpers.
LossFn = Callable[[Engine, BatchEncoder, Any], tuple[torch.Tensor, dict[str, float]]]
# What a stage's loss reads, made from a micro-batch of samples before any update of its step.
RolloutFn = Callable[[Engine, BatchEncoder, list[Sample]], Any]
# Evaluation of the model in training: (model, cfg) -> metrics named eval_*.
EvalFn = Callable[[LensModel, StageConfig], dict[str, float]]


def trainable_parameters(model: torch.nn.Module, prefixes: Sequence[str], exclude: Sequence[str] = ()) -> list[torch.nn.Parameter]:
    """Parameters whose names start with one of ``prefixes`` and with none of ``exclude``."""
    chosen = [p for name, p in model.named_parameters()
              if name.startswith(tuple(prefixes)) and not name.startswith(tuple(exclude))]
    if not chosen:
        raise ValueError(f"no parameter names start with any of {list(prefixes)} (excluding {list(exclude)})")
    return chosen


def is_frozen(model: torch.nn.Module, prefix: str) -> bool:
    """Whether no parameter under ``prefix`` learns (valid once ``build_engine`` has set requires_grad)."""
    return not any(p.requires_grad for name, p in model.named_parameters() if name.startswith(prefix))


def set_train_modes(model: LensModel) -> None:
    """Train mode, except for a fully frozen SAM 2 or reasoner, which stays in eval mode (the authors'
    frozen SAM 2 uses the eval-mode multimask fallback). A frozen reasoner with gradient checkpointing
    stays in train mode: Hugging Face only checkpoints in train mode, and Qwen2.5-VL has no dropout."""
    model.train()
    if is_frozen(model, "sam."):
        model.sam.eval()
    if is_frozen(model, "reasoner.") and not model.reasoner.is_activation_checkpointing:
        model.reasoner.eval()


def periodic_eval(model: LensModel, cfg: StageConfig) -> dict[str, float]:
    """The evaluator's metrics (gIoU, cIoU, box accuracy, parse failures, ...) on ``data.eval_limit``
    expressions of the eval split, merged over ranks, as ``eval_<name>``."""
    from training.data.registry import load_dataset
    from training.evaluate import run_evaluation
    from training.metrics import SegmentationMeter

    dataset = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.eval_split, per="sentence")
    model.eval()
    meter = run_evaluation(LensPredictor(model), dataset, SegmentationMeter(), limit=cfg.data.eval_limit,
                           rank=distributed.rank(), world_size=distributed.world_size(), progress=False)
    merged = SegmentationMeter()
    for shard in distributed.all_gather_object(meter):  # collective: every rank takes part
        merged.merge(shard)
    summary = merged.summary()
    return {f"eval_{k}": float(v) for k, v in summary.items() if isinstance(v, float)}


def train_stage(
    cfg: StageConfig,
    stage: str,
    model: LensModel,
    params: ParamSpec,
    loss: LossFn,
    *,
    rollout: RolloutFn | None = None,
    passes: int = 1,
    train_modes: Callable[[LensModel], None] = set_train_modes,
    evaluate: EvalFn = periodic_eval,
    before_export: Callable[[LensModel], None] | None = None,
    dataset: Dataset | None = None,
) -> dict[str, float]:
    """Train ``params`` of ``model`` for ``cfg.max_steps`` optimizer steps, resuming from the latest
    checkpoint under ``cfg.output_dir`` if there is one, then evaluate and export the model there.
    Returns the final evaluation's metrics (empty without one).

    Build the model with ``build_seeded_model(cfg)``. ``evaluate`` runs every ``cfg.eval_every_steps``
    and at the end (unless ``data.eval_limit`` is 0); ``train_modes`` sets the modules' train/eval
    modes before training and after each evaluation. ``before_export`` runs on the trained model
    just before it is written (e.g. to merge adapters). ``dataset`` replaces the default one sample
    per target of ``cfg.data`` (the micro-batches are then lists of its items).
    """
    engine = build_engine(model, params, cfg.engine, total_steps=cfg.max_steps)
    train_modes(model)
    encoder = BatchEncoder(model, cfg.data.cache_size if cfg.data.cache_frozen_features else 0,
                           vision_frozen=is_frozen(model, VISION_TOWER), sam_encoder_frozen=is_frozen(model, SAM_IMAGE_ENCODER))
    run = start_run(cfg, stage, engine, dataset if dataset is not None else training_dataset(cfg.data))
    state, logger, every = run.state, run.logger, cfg.checkpoint.every_steps
    with logger:
        while state.global_step < cfg.max_steps:
            saved_block = state.global_step // every if every else 0
            rollout_start = time.perf_counter()
            # Every rollout of a step is sampled before any of its losses, from the weights before its update.
            buffer = [] if rollout is None else [rollout(engine, encoder, next(run.stream))
                                                 for _ in range(engine.grad_accum_steps)]
            rollout_s = time.perf_counter() - rollout_start
            for pass_index in range(passes):
                started = time.perf_counter()
                metrics: dict[str, float] = {}
                rows = 0
                for micro in range(engine.grad_accum_steps):
                    if rollout is None and pass_index == 0:
                        buffer.append(next(run.stream))
                    with engine.autocast():
                        value, item_metrics = loss(engine, encoder, buffer[micro])
                    engine.backward(value)
                    engine.step()  # the optimizer steps after the last micro-batch
                    for key, number in item_metrics.items():
                        metrics[key] = metrics.get(key, 0.0) + number / engine.grad_accum_steps
                    rows += len(buffer[micro])
                state.global_step += 1
                state.data = run.sampler.state()
                if engine.grad_norm is not None:
                    metrics["grad_norm"] = engine.grad_norm
                if rollout is not None:
                    metrics.update(time_rollout_s=rollout_s, time_update_s=time.perf_counter() - started)
                    rollout_s = 0.0
                logger.step(state.global_step, metrics, num_samples=rows, lr=engine.lr)
                if state.global_step >= cfg.max_steps:
                    break
            if cfg.eval_every_steps and cfg.data.eval_limit and state.global_step % cfg.eval_every_steps == 0 \
                    and state.global_step < cfg.max_steps:
                logger.write(state.global_step, evaluate(model, cfg))
                train_modes(model)
            if every and state.global_step // every > saved_block:
                run.checkpoints.save(engine, state, cfg)
        run.checkpoints.save(engine, state, cfg)
        final = evaluate(model, cfg) if cfg.data.eval_limit else {}
        if final:
            logger.write(state.global_step, final)
    if before_export is not None:
        before_export(model)
    export_model(model, cfg.output_dir, {"stage": stage, "steps": state.global_step, "finished": time.time()})
    return final


@dataclass
class Run:
    """What resumes: the data order, checkpoints, the trainer state, the logger, the micro-batches."""

    sampler: ResumableSampler
    checkpoints: CheckpointManager
    state: TrainerState
    logger: RunLogger
    stream: Iterator[list]


def start_run(cfg: StageConfig, stage: str, engine: Engine, dataset: Dataset) -> Run:
    """Resume from the latest checkpoint under ``cfg.output_dir`` (if any), save the config, and open
    the logger and the resumable stream of micro-batches."""
    sampler = ResumableSampler(len(dataset), seed=cfg.seed)
    checkpoints = CheckpointManager(cfg.output_dir, keep_last=cfg.checkpoint.keep_last)
    state = checkpoints.resume(engine, cfg.checkpoint.resume) or TrainerState()
    if state.data is not None:
        sampler.load_state(state.data)
    if distributed.is_main():
        save_config(cfg, cfg.output_dir)
    logger = RunLogger(cfg.output_dir, cfg.max_steps, start_step=state.global_step, every_steps=cfg.log.every_steps,
                       tensorboard=cfg.log.tensorboard, progress_bar=cfg.log.progress_bar, desc=stage)
    stream = batches(dataset, sampler, cfg.engine.micro_batch_size, cfg.data.num_workers)
    return Run(sampler, checkpoints, state, logger, stream)


def meets_minimum(stage: str, metrics: dict[str, float], key: str, minimum: float, advice: str) -> bool:
    """False, with an error on stderr, when the final ``metrics[key]`` is below ``minimum``: a stage
    whose result would make the next stages pointless stops a pipeline (after exporting, so nothing
    is lost). True without that metric (no final evaluation) or with ``minimum`` 0."""
    value = metrics.get(key)
    if value is None or value >= minimum:
        return True
    print(f"{stage}: error: {key} {value:.3f} is below the configured minimum {minimum}: {advice}", file=sys.stderr)
    return False
