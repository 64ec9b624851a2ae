"""The supervised training loop that teacher-forced stages (SFT, alignment) share.

A stage builds its model, chooses what learns and supplies a step function (samples -> loss and
metrics); this module does the rest the same way for every stage: engine, train/eval modes of frozen
parts, feature caches, resumable data order, atomic checkpoints and exact resume, logging, periodic
and final evaluation with the evaluator, and the export of a directly loadable model.

    model = build_seeded_model(cfg)
    run_supervised(cfg, "sft", model, trainable_parameters(model, cfg.trainable), sft_step)
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from lens_model.modeling import LensModel
from training.common import distributed
from training.common.checkpoint import CheckpointManager, TrainerState
from training.common.config import save_config
from training.common.engine import ParamSpec, build_engine
from training.common.logging import RunLogger
from training.common.sampler import ResumableSampler
from training.data.sample import Sample
from training.stage import BatchEncoder, StageConfig, batches, export_model, training_dataset

VISION_TOWER = "reasoner.model.visual."
SAM_IMAGE_ENCODER = "sam.image_encoder."

# One micro-batch: (model, encoder, samples) -> differentiable loss and float metrics to log.
StepFn = Callable[[LensModel, BatchEncoder, list[Sample]], tuple[torch.Tensor, dict[str, float]]]
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


def stage_encoder(model: LensModel, cfg: StageConfig) -> BatchEncoder:
    """The batch encoder of a stage; with ``data.cache_frozen_features`` the features of frozen
    encoders (vision tower, SAM 2 image encoder) are cached (valid once ``build_engine`` ran)."""
    return BatchEncoder(model, cfg.data.cache_size if cfg.data.cache_frozen_features else 0,
                        vision_frozen=is_frozen(model, VISION_TOWER), sam_encoder_frozen=is_frozen(model, SAM_IMAGE_ENCODER))


def periodic_eval(model: LensModel, cfg: StageConfig) -> dict[str, float]:
    """The evaluator's metrics (gIoU, cIoU, box accuracy, parse failures, ...) on ``data.eval_limit``
    expressions of the eval split, merged over ranks, as ``eval_<name>``."""
    from training.data.registry import load_dataset
    from training.evaluate import run_evaluation
    from training.metrics import SegmentationMeter

    dataset = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.eval_split, per="sentence")
    model.eval()
    meter = model(run_evaluation, dataset, SegmentationMeter(), limit=cfg.data.eval_limit,  # via forward: ZeRO-3
                  rank=distributed.rank(), world_size=distributed.world_size(), progress=False)
    merged = SegmentationMeter()
    for shard in distributed.all_gather_object(meter):  # collective: every rank takes part
        merged.merge(shard)
    summary = merged.summary()
    return {f"eval_{k}": float(v) for k, v in summary.items() if isinstance(v, float)}


def periodic_eval_due(cfg: StageConfig, step: int) -> bool:
    """Whether a periodic evaluation runs after optimizer step ``step`` (the final step has the final one)."""
    return bool(cfg.eval_every_steps and cfg.data.eval_limit and step % cfg.eval_every_steps == 0 and step < cfg.max_steps)


def set_train_modes(model: LensModel) -> None:
    """Train mode, except for a fully frozen SAM 2 or reasoner, which stays in eval mode (the authors'
    frozen SAM 2 uses the eval-mode multimask fallback). A frozen reasoner with gradient checkpointing
    stays in train mode: Hugging Face only checkpoints in train mode, and Qwen2.5-VL has no dropout."""
    model.train()
    if is_frozen(model, "sam."):
        model.sam.eval()
    if is_frozen(model, "reasoner.") and not model.reasoner.is_activation_checkpointing:
        model.reasoner.eval()


@dataclass
class Run:
    """The run state every stage loop shares: resumable data order, checkpoints, trainer state, logger."""

    sampler: ResumableSampler
    checkpoints: CheckpointManager
    state: TrainerState
    logger: RunLogger
    stream: Iterator[list]

    def finish(self, cfg: StageConfig, model: LensModel, engine, evaluate: EvalFn) -> dict[str, float]:
        """Final checkpoint and final evaluation (call inside ``with run.logger``); returns the
        evaluation's metrics (empty when ``data.eval_limit`` is 0)."""
        self.checkpoints.save(engine, self.state, cfg)
        if not cfg.data.eval_limit:
            return {}
        metrics = evaluate(model, cfg)
        self.logger.write(self.state.global_step, metrics)
        return metrics


def start_run(cfg: StageConfig, stage: str, engine, dataset: Dataset) -> Run:
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


def export(cfg: StageConfig, stage: str, model: LensModel, state: TrainerState) -> None:
    export_model(model, cfg.output_dir, {"stage": stage, "steps": state.global_step, "finished": time.time()})


def run_supervised(
    cfg: StageConfig,
    stage: str,
    model: LensModel,
    params: ParamSpec,
    step: StepFn,
    evaluate: EvalFn = periodic_eval,
    before_export: Callable[[LensModel], None] | None = None,
    dataset: Dataset | None = None,
) -> dict[str, float]:
    """Train ``params`` of ``model`` for ``cfg.max_steps`` optimizer steps, resuming from the latest
    checkpoint under ``cfg.output_dir`` if there is one, then evaluate and export the model there.
    Returns the final evaluation's metrics (empty without one).

    Build the model with ``build_seeded_model(cfg)``. ``evaluate`` runs every
    ``cfg.eval_every_steps`` and at the end (unless ``data.eval_limit`` is 0). ``before_export`` runs
    on the trained model just before it is written (e.g. to merge adapters). ``dataset`` replaces the
    default one sample per target of ``cfg.data`` (``step`` then receives its items).
    """
    engine = build_engine(model, params, cfg.engine, total_steps=cfg.max_steps)
    set_train_modes(model)
    encoder = stage_encoder(model, cfg)
    run = start_run(cfg, stage, engine, dataset if dataset is not None else training_dataset(cfg.data))
    state, logger = run.state, run.logger
    step_metrics: dict[str, float] = {}
    step_samples = 0
    with logger:
        while state.global_step < cfg.max_steps:
            samples = next(run.stream)
            with engine.autocast():
                loss, metrics = engine(step, encoder, samples)  # through the model's forward (ZeRO-3 hooks)
            engine.backward(loss)
            for key, value in metrics.items():
                step_metrics[key] = step_metrics.get(key, 0.0) + value / cfg.engine.grad_accum_steps
            step_samples += len(samples)
            if not engine.step():
                continue
            state.global_step += 1
            state.data = run.sampler.state()
            logger.step(state.global_step, step_metrics, num_samples=step_samples, lr=engine.lr)
            step_metrics, step_samples = {}, 0
            if periodic_eval_due(cfg, state.global_step):
                logger.write(state.global_step, evaluate(model, cfg))
                set_train_modes(model)
            if cfg.checkpoint.every_steps and state.global_step % cfg.checkpoint.every_steps == 0:
                run.checkpoints.save(engine, state, cfg)
        final = run.finish(cfg, model, engine, evaluate)
    if before_export is not None:
        before_export(model)
    export(cfg, stage, model, state)
    return final


def meets_minimum(stage: str, metrics: dict[str, float], key: str, minimum: float, advice: str) -> bool:
    """False, with an error on stderr, when the final ``metrics[key]`` is below ``minimum``: a stage
    whose result would make the next stages pointless stops a pipeline (after exporting, so nothing
    is lost). True without that metric (no final evaluation) or with ``minimum`` 0."""
    value = metrics.get(key)
    if value is None or value >= minimum:
        return True
    print(f"{stage}: error: {key} {value:.3f} is below the configured minimum {minimum}: {advice}", file=sys.stderr)
    return False
