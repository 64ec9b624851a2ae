"""Resume from damaged checkpoints with two ranks (a real gloo group): rank 0 chooses, both load the
same checkpoint, and when none is intact both stop with the same one-line error instead of one rank
waiting forever.

This file is also the worker script: ``python THIS_FILE CHECKPOINT_DIR`` with RANK/WORLD_SIZE/... set.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from training.common import distributed
from training.common.checkpoint import CheckpointManager, NoIntactCheckpoint, TrainerState
from training.common.engine import build_engine
from training.common.schema import EngineConfig

REPO = Path(__file__).resolve().parents[1]


def make_engine():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    return build_engine(model, model.parameters(), EngineConfig(lr=0.1), total_steps=10)


def resume_on_two_ranks(out_dir: Path) -> list[dict]:
    port = distributed.free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, str(out_dir)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]  # a rank left waiting would time out
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_both_ranks_fall_back_to_the_same_checkpoint_or_both_stop(tmp_path):
    engine, manager = make_engine(), CheckpointManager(tmp_path)
    for step in (1, 2, 3):
        engine.backward(engine(torch.ones(2, 3)).sum())
        engine.step()
        manager.save(engine, TrainerState(global_step=step))
    (tmp_path / "checkpoints" / "step-3" / "optimizer.pt").write_bytes(b"not a zip")
    assert [r["resumed"] for r in resume_on_two_ranks(tmp_path)] == [2, 2]
    for step in (1, 2):
        (tmp_path / "checkpoints" / f"step-{step}" / "trainable.safetensors").write_bytes(b"")
    results = resume_on_two_ranks(tmp_path)
    assert results[0]["error"] == results[1]["error"] and "no intact checkpoint" in results[0]["error"]


def worker(out_dir: str) -> None:
    torch.distributed.init_process_group("gloo")
    try:
        result = {"resumed": CheckpointManager(out_dir).resume(make_engine()).global_step}
    except NoIntactCheckpoint as error:
        result = {"error": str(error)}
    Path(out_dir, f"rank{distributed.rank()}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1])
