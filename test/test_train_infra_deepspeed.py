"""DeepSpeed backend in one CPU process with gloo: ZeRO-2 (fp32) and ZeRO-3 (bf16) train, save through
the atomic checkpoint scheme, and load into freshly built engines.

Runs in a subprocess so DeepSpeed's process group and globals never leak into other tests. The first
run on a machine JIT-compiles DeepSpeed's shm comm op (~40 s, cached in TORCH_EXTENSIONS_DIR, which
test/conftest.py points at .torch_extensions); later runs take a few seconds.
This file is also the script: ``python THIS_FILE OUT_DIR``.
"""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def batches(count: int, size: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(size, 8, generator=gen) for _ in range(count)]
    return [(x, x[:, :1] * 2 - x[:, 1:2]) for x in xs]


def inputs_dtype(engine) -> torch.dtype:
    """The toy model's weights' dtype: DeepSpeed with bf16 keeps bf16 weights (the torch backend autocasts)."""
    return next(engine.module.parameters()).dtype


def train(engine, data) -> list[float]:
    losses = []
    for x, y in data:
        out = engine(x.to(engine.device, inputs_dtype(engine)))
        loss = nn.functional.mse_loss(out.float(), y.to(engine.device))
        engine.backward(loss)
        if engine.step():
            losses.append(loss.item())
    return losses


def eval_loss(engine) -> float:
    (x, y), = batches(1, size=64, seed=99)
    with torch.no_grad():
        return nn.functional.mse_loss(engine(x.to(engine.device, inputs_dtype(engine))).float(), y).item()


def params(engine) -> dict[str, torch.Tensor]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        return {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}


def run(out_dir: str) -> dict:
    from safetensors.torch import load_file

    from training.common.checkpoint import CheckpointManager, TrainerState
    from training.common.engine import build_engine
    from training.common.schema import EngineConfig

    report: dict = {}
    for name, cfg in {
        "zero2": EngineConfig(backend="deepspeed", zero_stage=2, lr=3e-2, micro_batch_size=4, grad_accum_steps=2,
                              warmup_steps=2, scheduler="cosine"),
        "zero3": EngineConfig(backend="deepspeed", zero_stage=3, lr=3e-2, micro_batch_size=4, bf16=True),
    }.items():
        model = toy_model()
        engine = build_engine(model, model.parameters(), cfg, total_steps=40)
        before = eval_loss(engine)
        train(engine, batches(32))
        after = eval_loss(engine)
        torch_model = toy_model()
        torch_engine = build_engine(torch_model, torch_model.parameters(), replace(cfg, backend="torch"), total_steps=40)
        train(torch_engine, batches(32))
        manager = CheckpointManager(Path(out_dir) / name)
        path = manager.save(engine, TrainerState(global_step=engine.global_step))
        saved, lr = params(engine), engine.lr
        continued = train(engine, batches(2))

        fresh_model = toy_model()
        fresh = build_engine(fresh_model, fresh_model.parameters(), cfg, total_steps=40)
        state = manager.resume(fresh)
        loaded = params(fresh)
        exported = load_file(path / "trainable.safetensors")
        report[name] = {
            "engine_type": type(engine._ds.optimizer).__name__,
            "eval_loss_before": before,
            "eval_loss_after": after,
            "global_step": engine.global_step - len(continued),
            "state_step": state.global_step,
            "fresh_step": fresh.global_step,
            "lr_equal": fresh.lr == lr,
            "max_diff_to_torch_backend": max((saved[n] - p.detach()).abs().max().item() for n, p in torch_model.named_parameters()),
            "params_equal": all(torch.equal(saved[n], loaded[n]) for n in saved),
            "exported_equal": all(torch.equal(saved[n], exported[n].float()) for n in saved),
            "exported_shapes": {n: list(t.shape) for n, t in exported.items()},
            "continued_equal": train(fresh, batches(2)) == continued,
            "files": sorted(os.listdir(path)),
        }
    return report


def test_deepspeed_zero2_and_zero3_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # the engine fills them in for a world of one
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], env=env, cwd=REPO, capture_output=True, text=True, timeout=540
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())

    zero2, zero3 = report["zero2"], report["zero3"]
    assert zero2["engine_type"] == "DeepSpeedZeroOptimizer"
    assert zero3["engine_type"] == "DeepSpeedZeroOptimizer_Stage3"
    for result in (zero2, zero3):
        assert result["eval_loss_after"] < 0.5 * result["eval_loss_before"], result
        assert result["state_step"] == result["fresh_step"] == result["global_step"]
        assert result["lr_equal"] and result["params_equal"] and result["exported_equal"], result
        assert result["continued_equal"], result  # optimizer + scheduler state came back too
        assert {"deepspeed", "trainable.safetensors", "trainer_state.json", "rng_rank0.pt"} <= set(result["files"])
    assert zero2["global_step"] == 16  # 32 micro-batches, 2 per optimizer step
    assert zero2["max_diff_to_torch_backend"] < 1e-5  # fp32 ZeRO-2 does the same maths as the torch backend
    assert zero3["max_diff_to_torch_backend"] < 0.1  # bf16 weights vs fp32 + autocast-free torch run
    assert zero3["exported_shapes"] == {"0.weight": [32, 8], "0.bias": [32], "2.weight": [1, 32], "2.bias": [1]}


if __name__ == "__main__":
    result = run(sys.argv[1])
    Path(sys.argv[1], "report.json").write_text(json.dumps(result))
