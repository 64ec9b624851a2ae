"""Exact resume: k steps, crash, restart in a fresh process, resume, go on to N steps -> bitwise the
same parameters and loss curve as one uninterrupted N-step run (torch backend, shuffled data order,
dropout, gradient accumulation, clipping and a warmup + cosine schedule all involved).

This file is also the toy training script the test launches: ``python THIS_FILE OUT MAX_STEPS [CRASH_AFTER]``.
"""
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_EVERY = 3


def run_toy_training(out_dir: str, max_steps: int, crash_after: int | None) -> None:
    from training.common.checkpoint import CheckpointManager, TrainerState
    from training.common.config import load_config, save_config
    from training.common.engine import build_engine
    from training.common.logging import RunLogger
    from training.common.rng import seed_everything
    from training.common.sampler import ResumableSampler
    from training.common.schema import TrainConfig

    cfg = load_config(
        TrainConfig,
        None,
        [
            f"output_dir={out_dir}",
            f"max_steps={max_steps}",
            "engine.lr=0.05",
            "engine.warmup_steps=2",
            "engine.micro_batch_size=4",
            "engine.grad_accum_steps=2",
            "engine.max_grad_norm=0.5",
            f"checkpoint.every_steps={CHECKPOINT_EVERY}",
            "log.every_steps=1",
            "log.progress_bar=false",
        ],
    )
    seed_everything(cfg.seed)
    data = torch.Generator().manual_seed(1234)
    inputs = torch.randn(22, 6, generator=data)  # 22 samples: epochs end with a partial micro-batch
    dataset = TensorDataset(inputs, inputs.sum(dim=1, keepdim=True))
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    engine = build_engine(model, model.parameters(), cfg.engine, total_steps=cfg.max_steps)
    checkpoints = CheckpointManager(cfg.output_dir, keep_last=cfg.checkpoint.keep_last)
    sampler = ResumableSampler(len(dataset), seed=cfg.seed)
    state = checkpoints.resume(engine, cfg.checkpoint.resume) or TrainerState(data=sampler.state())
    sampler.load_state(state.data)
    # A private generator: DataLoader draws a base seed each time an iterator starts, which would
    # otherwise consume the global torch RNG differently in a resumed run.
    loader = DataLoader(dataset, batch_size=cfg.engine.micro_batch_size, sampler=sampler, generator=torch.Generator())
    save_config(cfg, cfg.output_dir)
    engine.module.train()
    with RunLogger(cfg.output_dir, cfg.max_steps, start_step=state.global_step, every_steps=cfg.log.every_steps,
                   progress_bar=cfg.log.progress_bar) as logger:
        samples = 0
        while state.global_step < cfg.max_steps:
            if sampler.position >= sampler.epoch_length:
                sampler.set_epoch(sampler.epoch + 1)
            for x, y in loader:
                with engine.autocast():
                    loss = nn.functional.mse_loss(engine(x.to(engine.device)), y.to(engine.device))
                engine.backward(loss)
                sampler.advance(len(x))
                samples += len(x)
                if not engine.step():
                    continue
                state.global_step, state.data = engine.global_step, sampler.state()
                logger.step(state.global_step, {"loss": loss.item()}, num_samples=samples, lr=engine.lr)
                samples = 0
                if state.global_step % cfg.checkpoint.every_steps == 0:
                    checkpoints.save(engine, state, cfg)
                if state.global_step == crash_after:
                    os._exit(17)  # die without any cleanup, like a killed job
                if state.global_step >= cfg.max_steps:
                    break
    save_file({n: p.detach().contiguous() for n, p in engine.module.named_parameters()}, f"{out_dir}/final.safetensors")


def launch(out_dir: Path, max_steps: int, crash_after: int | None = None) -> subprocess.Popen:
    args = [sys.executable, __file__, str(out_dir), str(max_steps)] + ([str(crash_after)] if crash_after else [])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, expected_rc: int = 0) -> None:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == expected_rc, output


def losses(out_dir: Path) -> dict[int, float]:
    from training.common.logging import read_metrics

    return {record["step"]: record["loss"] for record in read_metrics(out_dir / "metrics.jsonl")}


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    total, crash_after = 10, 7  # checkpoints at 3 and 6; step 7 is lost in the crash and redone
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    first, second = launch(straight, total), launch(interrupted, total, crash_after)
    finish(first)
    finish(second, expected_rc=17)
    assert (interrupted / "checkpoints" / "latest").read_text().strip() == "step-6"
    assert max(losses(interrupted)) == crash_after  # the crashed run logged step 7 ...
    finish(launch(interrupted, total))  # ... fresh process: resumes from step-6

    expected, resumed = load_file(straight / "final.safetensors"), load_file(interrupted / "final.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert losses(interrupted) == losses(straight)  # ... and its step-7 record was replaced, not duplicated
    assert sorted(losses(straight)) == list(range(1, total + 1))
    resumed_from = load_file(interrupted / "checkpoints" / "step-6" / "trainable.safetensors")
    assert not torch.equal(resumed_from["0.weight"], resumed["0.weight"])  # steps 7-10 did update the weights


if __name__ == "__main__":
    run_toy_training(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
