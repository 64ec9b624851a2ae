"""The model a training stage starts from, and the seeding around building it."""
from __future__ import annotations

import torch

from lens_model.checkpoints import load_model, new_model
from lens_model.config import LensConfig
from lens_model.hub import resolve_dtype
from lens_model.modeling import LensModel
from lens_model.typed_json import from_json
from training.common.rng import seed_everything
from training.stage_config import ModelSection, StageConfig


def build_model(section: ModelSection) -> LensModel:
    """The stage's starting model, on CPU in ``section.dtype``; the engine moves it to its device."""
    overrides = dict(section.lens)
    if section.init:
        check_lens_fields(overrides)
        model = load_model(section.init, device="cpu", dtype=section.dtype, **overrides)
    elif "reasoner" not in overrides:
        raise ValueError("set model.init (a LENS model) or model.lens.reasoner (a Qwen-VL to build a new LENS around)")
    else:
        model = new_model(from_json(LensConfig, overrides, "model.lens")).to(resolve_dtype(section.dtype, torch.device("cpu")))
    if section.gradient_checkpointing:
        model.reasoner.gradient_checkpointing_enable()
    return model


def check_lens_fields(overrides: dict) -> None:
    """Refuse ``model.lens`` keys that are not LensConfig fields (a typo must not be ignored)."""
    unknown = sorted(set(overrides) - set(LensConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"model.lens: unknown LensConfig fields {unknown}")


def build_seeded_model(cfg: StageConfig) -> LensModel:
    """``build_model`` between two ``seed_everything(cfg.seed)``: a newly built model's weights come
    from the seed, and the training stream (data order, box jitter, dropout, sampling) starts from the
    seed whatever building drew. Loading a checkpoint first draws random weights for its architecture,
    so without the second seeding a stage's training would change with, say, the tokenizer's size."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model)
    seed_everything(cfg.seed)
    return model
