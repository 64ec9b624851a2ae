"""A stage's training randomness starts from its seed, whatever building its model drew."""
from __future__ import annotations

import random

import numpy as np
import torch

from lens_model.checkpoints import save_model
from model_fixtures import tiny_model, tiny_qwen2_vl_model
from training.common.config import load_config
from training.common.rng import seed_everything
from training.stage_config import StageConfig
from training.starting_model import build_model, build_seeded_model


def draws() -> tuple[float, float, float]:
    return torch.rand(1).item(), float(np.random.rand()), random.random()


def test_training_stream_does_not_depend_on_the_loaded_architecture(tmp_path):
    configs = []
    for name, model in (("qwen2_5_vl", tiny_model()), ("qwen2_vl", tiny_qwen2_vl_model())):
        save_model(model, tmp_path / name)
        overrides = [f"model.init={tmp_path / name}", "data.root=unused", f"output_dir={tmp_path}", "max_steps=1", "seed=7"]
        configs.append(load_config(StageConfig, None, overrides))

    # Loading draws random weights for each architecture first, differently for the two.
    after_plain_build = []
    for cfg in configs:
        seed_everything(cfg.seed)
        build_model(cfg.model)
        after_plain_build.append(draws())
    assert after_plain_build[0] != after_plain_build[1]

    seed_everything(7)
    expected = draws()
    for cfg in configs:
        build_seeded_model(cfg)
        assert draws() == expected

