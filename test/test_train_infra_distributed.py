"""Distributed helpers: single-process fallbacks in-process, and a real 2-process gloo group.

This file is also the worker script: ``python THIS_FILE OUT_DIR`` with RANK/WORLD_SIZE/... set.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from training.common import distributed

REPO = Path(__file__).resolve().parents[1]


def test_single_process_fallbacks(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.local_rank(), distributed.world_size()) == (0, 0, 1)
    assert distributed.is_main()
    distributed.barrier()
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("x") == "x"
    tensor = torch.arange(3)
    assert distributed.broadcast(tensor) is tensor
    assert distributed.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


def test_launcher_env_and_single_process_defaults(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert distributed.launcher_env() == distributed.DistEnv(rank=3, local_rank=1, world_size=8)
    assert distributed.rank() == 3 and not distributed.is_main()  # before the process group exists
    distributed.set_single_process_env()  # a launcher already set them: leave them alone
    assert os.environ["RANK"] == "3"
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    distributed.set_single_process_env()
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("0", "0", "1")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0


def test_two_process_gloo_group(tmp_path):
    port = distributed.free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(subprocess.Popen([sys.executable, __file__, str(tmp_path)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, result in enumerate(results):
        assert result["rank"] == rank and result["world_size"] == 2 and result["is_main"] == (rank == 0)
        assert result["gathered"] == [{"rank": 0, "rollouts": [0]}, {"rank": 1, "rollouts": [1, 1]}]
        assert result["broadcast_object"] == "seed-from-rank-0"
        assert result["broadcast_tensor"] == [0.0, 1.0, 2.0]
        assert result["seed"] == 42 + rank
    shards = [r["sampler"] for r in results]
    assert len(shards[0]) == len(shards[1]) == 4
    # 7 samples padded to 8 by repeating the first of the permutation, which rank 0 reads first
    assert sorted(shards[0] + shards[1]) == sorted([*range(7), shards[0][0]])


def worker(out_dir: str) -> None:
    from training.common.rng import seed_everything
    from training.common.sampler import ResumableSampler

    torch.distributed.init_process_group("gloo")
    rank = distributed.rank()
    tensor = torch.arange(3, dtype=torch.float32) if rank == 0 else torch.zeros(3)
    result = {
        "rank": rank,
        "world_size": distributed.world_size(),
        "is_main": distributed.is_main(),
        "gathered": distributed.all_gather_object({"rank": rank, "rollouts": [rank] * (rank + 1)}),
        "broadcast_object": distributed.broadcast_object("seed-from-rank-0" if rank == 0 else "stale"),
        "broadcast_tensor": distributed.broadcast(tensor).tolist(),
        "seed": seed_everything(42),
        "sampler": list(ResumableSampler(7, seed=5)),
    }
    distributed.barrier()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1])
