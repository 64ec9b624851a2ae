"""Every shipped stage config loads against its stage's schema, so a misspelt key or a wrong type in
a YAML under training/configs/ or a recipe's configs/ fails CI instead of the first training run.

A config file names its stage in one ``_``-separated part of its file name (``align_tiny.yaml``,
``grpo_box.yaml``); a recipe's config is read with the recipe's version of the stage where it has one.
"""
import importlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lens_model.config import LensConfig
from lens_model.typed_json import from_json
from training.common.config import load_config
from training.common.deepspeed_engine import deepspeed_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "training" / "configs"
RECIPE_DIR = REPO / "recipes" / "demo" / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml")) + sorted(RECIPE_DIR.glob("*.yaml"))
# Stage name in a config's file name -> (module, schema class).
SCHEMAS = {
    "align": ("training.align", "AlignConfig"),
    "sft": ("training.sft", "SFTConfig"),
    "grpo": ("training.grpo.config", "GRPOConfig"),
}
# The demo recipe's own stages: its pretraining of SAM 2, the vision tower and SAM 2's memory modules, and SFT
# with attention grounding.
RECIPE_SCHEMAS = {
    **SCHEMAS,
    "sam": ("recipes.demo.sam_pretrain", "SamPretrainConfig"),
    "vision": ("recipes.demo.vision_pretrain", "VisionPretrainConfig"),
    "sft": ("recipes.demo.sft", "DemoSFTConfig"),
    "memory": ("recipes.demo.memory_pretrain", "MemoryPretrainConfig"),
}
# Values a config may leave for the command line, filled in only where the file does not set them.
PLACEHOLDERS = {"output_dir": "outputs/test", "max_steps": "1", "data.root": "data"}


def schema_for(path: Path) -> type:
    schemas = RECIPE_SCHEMAS if path.parent == RECIPE_DIR else SCHEMAS
    stages = [part for part in path.stem.split("_") if part in schemas]
    if len(stages) != 1:
        pytest.fail(f"{path.name}: the file name must name exactly one stage of {sorted(schemas)}, found {stages}")
    module_name, class_name = schemas[stages[0]]
    return getattr(importlib.import_module(module_name), class_name)


def load_shipped(path: Path):
    raw = OmegaConf.load(path)
    overrides = [f"{key}={value}" for key, value in PLACEHOLDERS.items() if OmegaConf.select(raw, key) is None]
    return load_config(schema_for(path), path, overrides)


def test_configs_are_found():
    assert CONFIGS, f"no YAML files in {CONFIG_DIR}"


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_config_loads_against_its_stage_schema(path):
    cfg = load_shipped(path)
    assert cfg.max_steps > 0
    from_json(LensConfig, OmegaConf.to_container(cfg.model.lens), "model.lens")  # names and types of LensConfig
    if cfg.engine.backend == "deepspeed":
        deepspeed_config(cfg.engine)  # the generated DeepSpeed config (checks the ZeRO stage)


def test_qwen2p5_3b_alignment_has_the_paper_settings():
    cfg = load_shipped(CONFIG_DIR / "align_qwen2p5_3b.yaml")
    engine, model = cfg.engine, cfg.model.lens
    gpus = 8  # the launch the file documents
    assert engine.micro_batch_size * engine.grad_accum_steps * gpus == 128
    assert (engine.lr, engine.scheduler, engine.weight_decay, engine.max_grad_norm) == (3e-5, "cosine", 0.0, 1.0)
    assert engine.bf16 and engine.warmup_steps > 0 and cfg.seed == 42
    assert model.num_queries == 64 and model.sam_image_size == 1024 and model.max_pixels == 1_000_000
    assert (model.prompt_collapse, model.query_positions) == ("conv1d", "sequential")
    assert model.sam2_config.endswith("sam2_hiera_l.yaml") and Path(model.sam2_checkpoint).name == "sam2_hiera_large.pt"
    assert cfg.model.gradient_checkpointing and list(cfg.trainable) == ["context."]
    assert cfg.data.dataset in ("refcoco", "refcoco+", "refcocog") and cfg.data.split == "train"


def test_loss_weights_accept_overrides_and_saved_configs_reload(tmp_path):
    from training.align import AlignConfig
    from training.common.config import save_config

    cfg = load_config(AlignConfig, "training/configs/align_tiny.yaml", ["loss.dice=0.5", "loss.focal=1.0"])
    assert cfg.loss.dice == 0.5 and cfg.loss.focal == 1.0
    saved = save_config(cfg, tmp_path)
    reloaded = load_config(AlignConfig, saved)
    assert reloaded.loss.dice == 0.5
