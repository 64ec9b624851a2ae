"""Shared scaffolding for training-stage tests: synthetic data, running a stage, crash-and-resume."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file

from training.common.checkpoint import CheckpointManager
from training.synthetic import main as synthetic_main

QUIET = ("log.progress_bar=false", "log.tensorboard=false")


def synthetic_data(root: Path, images: int, seed: int, size: int, *extra: str) -> Path:
    """``python -m training.synthetic`` with these arguments (``extra``: further options)."""
    synthetic_main(["--out", str(root), "--images", str(images), "--seed", str(seed), "--size", str(size), *extra])
    return root


def run_stage(main: Callable[[list[str]], int], config: str, data_root: Path, out: Path, *overrides: str) -> None:
    args = ["--config", config, f"data.root={data_root}", f"output_dir={out}", *QUIET, *overrides]
    assert main(args) == 0


def assert_exact_resume(main, config: str, data_root: Path, tmp_path: Path, monkeypatch, overrides: tuple[str, ...],
                        keys: Callable[[str], bool] = lambda key: True, weights: str = "model.safetensors") -> None:
    """A run that crashes right after its first checkpoint and is restarted ends with exactly the
    parameters (the ``weights`` file it exports) of an uninterrupted run (``overrides`` must
    checkpoint before the last step)."""
    run_stage(main, config, data_root, tmp_path / "straight", *overrides)
    real_save = CheckpointManager.save

    def crash_after_first_save(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(CheckpointManager, "save", crash_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        run_stage(main, config, data_root, tmp_path / "resumed", *overrides)
    monkeypatch.setattr(CheckpointManager, "save", real_save)
    run_stage(main, config, data_root, tmp_path / "resumed", *overrides)
    straight = load_file(tmp_path / "straight" / weights)
    resumed = load_file(tmp_path / "resumed" / weights)
    assert straight.keys() == resumed.keys()
    for key in filter(keys, straight):
        assert torch.equal(straight[key], resumed[key]), key


def deepspeed_env() -> dict[str, str]:
    """Launcher variables for a one-process DeepSpeed run on a free port."""
    import os

    from training.common.distributed import free_port

    return {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port())}


def run_stage_process(module: str, args: list[str], timeout: int = 600) -> None:
    """``python -m module args`` as a separate process (DeepSpeed leaves process-group state behind)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", module, *args], env=deepspeed_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
