"""Stage 1, alignment: teach the context queries and connector to prompt SAM 2.

    python -m training.align --config training/configs/align_tiny.yaml [key=value ...]
    deepspeed --num_gpus 8 -m training.align --config training/configs/align_qwen2p5_3b.yaml

The reasoner and SAM 2 are frozen (``trainable`` selects what learns, by parameter-name prefix).
Each sample is teacher-forced: prompt + the ground-truth answer written in the exact format the model
produces at inference (JSON box in the reasoner's frame, or think/answer with the sample's reasoning)
+ the M queries; the loss is BCE + Dice of SAM 2's mask at the original resolution, against the
answer's first object, no-target samples left out (``training.instance_targets``). Frozen encoder
outputs (SAM 2 image features, reasoner vision features) are cached per image. The loop itself
(checkpoints, resume, logging, evaluation, export) is ``training.loop.train_stage``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial

from training.batches import BatchEncoder
from training.common.config import parse_cli, stage_main
from training.common.engine import Engine
from training.instance_targets import first_instance_mask
from training.loop import meets_minimum, train_stage, trainable_parameters
from training.losses import MaskLossWeights, segmentation_loss
from training.stage_config import StageConfig
from training.starting_model import build_seeded_model


@dataclass
class AlignConfig(StageConfig):
    # Parameter-name prefixes that learn; the paper trains only the context module.
    trainable: list[str] = field(default_factory=lambda: ["context."])
    loss: MaskLossWeights = field(default_factory=MaskLossWeights)
    min_eval_giou: float = 0.0  # fail (after exporting) when the final validation gIoU is below this (0: no check)


def align_loss(engine: Engine, encoder: BatchEncoder, samples, weights: MaskLossWeights):
    template = encoder.model.config.template
    batch = encoder.encode(samples, template)
    answers = encoder.model.encode_completions(batch.teacher_answers(template))
    out = engine(batch.inputs, answers, batch.sam_features)
    loss, parts, ious = segmentation_loss(out.mask_logits, samples, weights, [first_instance_mask(s) for s in samples])
    metrics = {"loss": float(loss.detach()), **{f"loss_{k}": v for k, v in parts.items() if k != "total"},
               **({"train_iou": sum(ious) / len(ious)} if ious else {})}  # no-target rows are not scored
    return loss, metrics


def train(cfg: AlignConfig) -> dict[str, float]:
    """Train and export; returns the final evaluation's metrics (empty without evaluation)."""
    model = build_seeded_model(cfg)
    params = trainable_parameters(model, list(cfg.trainable))
    return train_stage(cfg, "align", model, params, partial(align_loss, weights=cfg.loss))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(argv, AlignConfig, description="LENS stage 1: alignment of the context module")
    advice = (f"the context module stayed on its plateau (SAM 2 segments every object), so GRPO would start from "
              f"unusable masks. The model is exported to {cfg.output_dir} all the same. Whether alignment leaves "
              f"the plateau depends on its random stream and on how well SAM 2 follows box prompts: train again "
              f"with another `seed=`, or give it a SAM 2 that segments what a box prompt points at.")
    return stage_main("align", lambda: 0 if meets_minimum("align", train(cfg), "eval_gIoU", cfg.min_eval_giou, advice)
                      else 1)


if __name__ == "__main__":
    sys.exit(main())
