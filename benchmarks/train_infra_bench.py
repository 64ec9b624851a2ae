"""Costs of the shared training infrastructure, to check it is never the bottleneck of a stage.

    python -m benchmarks.train_infra_bench [--out results.json] [--params-millions 25]

Measures: atomic checkpoint save (with fsync), the integrity check a resume runs first, and load for
a model of the given trainable size, the per-step overhead of the torch engine (accumulation +
clipping + schedule) over a bare AdamW loop, the GRPO loss forward+backward at LENS stage-2 shapes,
and the rewards of one completion at a 1024x1024 mask. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lens_model.answer_parser import parse_answer
from training.common.checkpoint import CheckpointManager, TrainerState
from training.common.engine import build_engine
from training.common.integrity import damage
from training.common.schema import EngineConfig
from training.grpo.objective import group_advantages, grpo_loss
from training.grpo.rewards import reward_components


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}


def mlp(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


def bench_checkpoint(params_millions: float) -> dict[str, object]:
    width = 1024
    depth = max(1, round(params_millions * 1e6 / (width * width + width)))
    model = mlp(width, depth)
    engine = build_engine(model, model.parameters(), EngineConfig(), total_steps=10)
    engine.backward(model(torch.randn(2, width)).sum())
    engine.step()  # creates the AdamW moments, so the optimizer file has its real size
    with tempfile.TemporaryDirectory() as tmp:
        manager = CheckpointManager(tmp, keep_last=1)
        step = iter(range(1, 10_000))
        save = timed(lambda: manager.save(engine, TrainerState(global_step=next(step))), repeats=3)
        latest = manager.latest()
        size = sum(f.stat().st_size for f in latest.iterdir())
        resume_check = timed(lambda: damage(latest, "trainer_state.json"), repeats=3)
        load = timed(lambda: manager.load(engine, latest), repeats=3)
    return {
        "trainable_params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
        "checkpoint_mb": size / 2**20,
        "save": save,
        "resume_check": resume_check,
        "load": load,
    }


def bench_engine_overhead() -> dict[str, object]:
    x = torch.randn(32, 256)
    bare_model = mlp(256, 4)
    optimizer = torch.optim.AdamW(bare_model.parameters(), lr=1e-4)

    def bare_step() -> None:
        bare_model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model = mlp(256, 4)
    engine = build_engine(model, model.parameters(), EngineConfig(lr=1e-4, warmup_steps=10), total_steps=10**6)

    def engine_step() -> None:
        engine.backward(engine(x).pow(2).mean())
        engine.step()

    return {"bare_adamw_step": timed(bare_step, 200), "torch_engine_step": timed(engine_step, 200)}


def bench_grpo_loss(prompts: int = 8, group: int = 8, tokens: int = 768) -> dict[str, object]:
    batch = prompts * group
    gen = torch.Generator().manual_seed(0)
    logits_source = torch.randn(batch, tokens, generator=gen) * 0.1 - 2.0
    mask = (torch.arange(tokens)[None] < torch.randint(100, tokens, (batch, 1), generator=gen)).float()
    rewards = torch.rand(batch, generator=gen)

    def step() -> None:
        logp = logits_source.clone().requires_grad_(True)
        advantages = group_advantages(rewards, group_size=group)
        loss, stats = grpo_loss(logp, None, logits_source - 0.01, advantages, mask, beta=0.04)
        loss.backward()
        stats.as_dict()

    return {"shape": [batch, tokens], "loss_forward_backward": timed(step, 50)}


def bench_rewards() -> dict[str, object]:
    text = '<think>the red mug left of the laptop</think><answer>[{"bbox_2d": [120, 80, 410, 370], "label": "mug"}]</answer>'
    rng = np.random.default_rng(0)
    gt = np.zeros((1024, 1024), dtype=bool)
    gt[100:600, 200:700] = True
    pred = gt ^ (rng.random(gt.shape) < 0.05)

    def score() -> None:
        reward_components(parse_answer(text), template="reasoning", gt_boxes=[(100, 90, 400, 380)], pred_mask=pred, gt_mask=gt)

    return {"parse_and_rewards_1024px": timed(score, 50)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--params-millions", type=float, default=25.0, help="trainable size for the checkpoint benchmark")
    args = parser.parse_args()
    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "checkpoint": bench_checkpoint(args.params_millions),
        "engine": bench_engine_overhead(),
        "grpo": bench_grpo_loss(),
        "rewards": bench_rewards(),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
