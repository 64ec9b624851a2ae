"""Alignment stage: it learns, it resumes exactly after a crash, and it runs under DeepSpeed ZeRO-2."""
import json

import pytest
import torch
from safetensors.torch import load_file

from training import align
from training.common.checkpoint import CheckpointManager
from training.common.logging import read_metrics
from training.synthetic import main as synthetic_main

CONFIG = "training/configs/align_tiny.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    synthetic_main(["--out", str(root), "--images", "10", "--seed", "5", "--size", "112"])
    return root


def run(data_root, out, *overrides):
    args = ["--config", CONFIG, f"data.root={data_root}", f"output_dir={out}", "log.progress_bar=false",
            "log.tensorboard=false", *overrides]
    assert align.main(args) == 0


def context_state(directory):
    return {k: v for k, v in load_file(directory / "model.safetensors").items() if k.startswith("context.")}


def test_alignment_lowers_the_loss_and_raises_iou(data_root, tmp_path):
    # Only the context module learns; the tiny SAM 2 is random and frozen, so the Dice term can barely
    # move, while BCE and IoU show the queries learning to steer the decoder.
    run(data_root, tmp_path / "out", "max_steps=30", "log.every_steps=5", "engine.lr=1e-2", "data.eval_limit=0")
    records = [r for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if "loss" in r]
    first, end = records[0], records[-2:]
    mean = lambda key: sum(r[key] for r in end) / len(end)  # noqa: E731
    assert mean("loss") < 0.9 * first["loss"]
    assert mean("loss_bce") < 0.75 * first["loss_bce"]
    assert mean("train_iou") > first["train_iou"] + 0.05
    info = json.loads((tmp_path / "out" / "training_info.json").read_text())
    assert info["stage"] == "align" and info["steps"] == 30


def test_only_the_context_module_changes(data_root, tmp_path):
    from lens_model.hub import build_tiny_random

    run(data_root, tmp_path / "out", "max_steps=3", "data.eval_limit=0")
    trained = load_file(tmp_path / "out" / "model.safetensors")
    start = build_tiny_random().state_dict()
    changed = {k for k, v in trained.items() if not torch.equal(v, start[k])}
    assert changed and all(k.startswith("context.") for k in changed)


def test_resume_after_a_crash_reaches_the_same_parameters(data_root, tmp_path, monkeypatch):
    common = ("max_steps=6", "checkpoint.every_steps=3", "data.eval_limit=0")
    run(data_root, tmp_path / "straight", *common)

    real_save = CheckpointManager.save

    def crash_after_first_save(self, *args, **kwargs):
        path = real_save(self, *args, **kwargs)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(CheckpointManager, "save", crash_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        run(data_root, tmp_path / "resumed", *common)
    monkeypatch.setattr(CheckpointManager, "save", real_save)
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "step-3"
    run(data_root, tmp_path / "resumed", *common)
    straight, resumed = context_state(tmp_path / "straight"), context_state(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_alignment_under_deepspeed(data_root, tmp_path, zero_stage):
    """A real `python -m training.align` process on the DeepSpeed engine (ZeRO-2/3, gloo, one CPU rank)."""
    pytest.importorskip("deepspeed")
    import os
    import subprocess
    import sys

    from training.common.distributed import free_port

    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    args = ["--config", CONFIG, f"data.root={data_root}", f"output_dir={tmp_path / 'ds'}", "log.progress_bar=false",
            "log.tensorboard=false", "max_steps=4", "engine.backend=deepspeed", f"engine.zero_stage={zero_stage}",
            "checkpoint.every_steps=2", "data.eval_limit=2"]
    proc = subprocess.run([sys.executable, "-m", "training.align", *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ds" / "model.safetensors").is_file()
    assert (tmp_path / "ds" / "checkpoints" / "step-4" / "deepspeed").is_dir()
    from lens_model.hub import load_model

    load_model(str(tmp_path / "ds"))
