"""SFT stage: the completion loss falls, it resumes exactly after a crash, and its output loads."""
import json

import pytest
import torch
from safetensors.torch import load_file

from stage_fixtures import assert_exact_resume, run_stage, synthetic_data
from training import sft
from training.common.logging import read_metrics

CONFIG = "training/configs/sft_tiny.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("syn"), images=10, seed=5, size=112)


def run(data_root, out, *overrides):
    run_stage(sft.main, CONFIG, data_root, out, "data.eval_limit=0", *overrides)


def test_completion_nll_averages_only_completion_tokens():
    logprobs = torch.tensor([[-1.0, -3.0, -100.0], [-2.0, -100.0, -100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sft.completion_nll(logprobs, mask).item() == pytest.approx(2.0)


def test_sft_lowers_the_completion_loss(data_root, tmp_path):
    # tiny-random starts near uniform over its vocabulary (about ln 414 = 6.0 nats per token); the
    # templated reasoning and JSON answer are mostly predictable, so the loss falls far below that.
    run(data_root, tmp_path / "out", "max_steps=40", "log.every_steps=5", "engine.lr=1e-2")
    records = [r for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if "loss" in r]
    assert records[0]["loss"] > 4.5
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    info = json.loads((tmp_path / "out" / "training_info.json").read_text())
    assert info["stage"] == "sft" and info["steps"] == 40


def test_frozen_vision_tower_and_the_rest_outside_the_reasoner_stay_unchanged(data_root, tmp_path):
    from lens_model.checkpoints import load_model
    from lens_model.predictor import LensPredictor
    from lens_model.tiny import build_tiny_random

    run(data_root, tmp_path / "out", "max_steps=2", "freeze_vision_tower=true")
    trained = load_file(tmp_path / "out" / "model.safetensors")
    start = build_tiny_random().state_dict()
    changed = {k for k, v in trained.items() if not torch.equal(v, start[k])}
    assert any(k.startswith("reasoner.model.language_model.") for k in changed)
    assert all(k.startswith("reasoner.") and not k.startswith(sft.VISION_TOWER) for k in changed)
    model = load_model(str(tmp_path / "out"))
    assert model.config.template == "reasoning" and not model.config.random_weights
    image = torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()
    assert LensPredictor(model).predict(image, "the red circle").mask.shape == (32, 32)


def test_resume_after_a_crash_reaches_the_same_parameters(data_root, tmp_path, monkeypatch):
    assert_exact_resume(sft.main, CONFIG, data_root, tmp_path, monkeypatch,
                        ("max_steps=4", "checkpoint.every_steps=2", "log.every_steps=1", "data.eval_limit=0"))
    curve = lambda out: [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert curve(tmp_path / "straight") == curve(tmp_path / "resumed")


def test_lora_adapters_learn_and_are_merged_into_a_plain_model(data_root, tmp_path, caplog):
    """With adapters the reasoner learns only through them (as in GRPO): the default ``trainable``
    ["reasoner."] selects weights that stay frozen, and a warning says so."""
    from lens_model.checkpoints import load_model
    from lens_model.tiny import build_tiny_random

    with caplog.at_level("WARNING", logger="training.lora"):
        run(data_root, tmp_path / "out", "max_steps=3", "lora.rank=4", "lora.target_modules=[q_proj,v_proj]",
            "engine.lr=1e-2")
    assert "learns through its adapters only" in caplog.text
    trained = load_file(tmp_path / "out" / "model.safetensors")
    start = build_tiny_random().state_dict()
    assert trained.keys() == {k for k in start if k != "reasoner.lm_head.weight"}
    changed = {k for k, v in trained.items() if not torch.equal(v, start[k])}
    assert changed and all(k.startswith("reasoner.model.language_model.") and k.endswith(("q_proj.weight", "v_proj.weight"))
                           for k in changed)
    load_model(str(tmp_path / "out"))
