"""SFT step time of the demo model with attention grounding: the grounded head's probabilities
recomputed from its layers' inputs (the reasoner on SDPA, as ``training.sft`` runs it) against eager
attention in every layer (what reading the probabilities off the model would need), without
grounding for reference, and with the short user turn ``Find "{query}".`` (``LensConfig.instruction``)
instead of the paper's reasoning prompt.

    python -m benchmarks.sft_grounding [--repeats 5] [--batch-size 16] [--images 64] [--threads 1]

Each step is the stage's own: ``training.sft.sft_step`` (reasoning template, grounding weight 0.1 on
the answer box and the reasoning's points) then the torch engine's backward and AdamW step on the
whole reasoner. The model is the untrained demo architecture (``recipes.demo.init_model``; weights do
not change the cost) on a synthetic data set of 1-6 shapes per 112-pixel scene. Times are medians
over the repeats, the three settings interleaved; the ratio to the recomputed setting is printed.
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from training.common.engine import build_engine
from training.common.schema import EngineConfig
from training.data.registry import load_dataset
from recipes.demo.init_model import DemoArchitecture, build_demo_model
from training.batches import BatchEncoder
from recipes.demo.grounding_attention import AttentionGrounding, GroundingAttentionSection
from training.loop import set_train_modes, trainable_parameters
from training.sft import sft_loss
from training.synthetic import generate_dataset

SETTINGS = ("grounded head recomputed (SDPA)", "eager attention everywhere", "no grounding (SDPA)",
            "grounded, short prompt (SDPA)")
SHORT_INSTRUCTION = 'Find "{query}".'


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp), num_images=args.images, seed=0, size=112, objects=(1, 6))
        dataset = load_dataset("synthetic", tmp, "train")
        samples = list(dataset)  # decoded while the files exist
        # The tokenizer learns both prompts (the paper's is always in its corpus).
        model = build_demo_model(dataset, DemoArchitecture(lm_init_std=0.088), instruction=SHORT_INSTRUCTION)
    engine = build_engine(model, trainable_parameters(model, ["reasoner."]), EngineConfig(lr=1e-4), total_steps=10**6)
    set_train_modes(model)
    encoder = BatchEncoder(model, 0, vision_frozen=False, sam_encoder_frozen=False)
    grounding = AttentionGrounding(GroundingAttentionSection(weight=0.1, reasoning_points=True))
    rng = random.Random(0)

    def step(setting: str) -> float:
        model.reasoner.set_attn_implementation("eager" if setting == SETTINGS[1] else "sdpa")
        model.config.instruction = SHORT_INSTRUCTION if setting == SETTINGS[3] else ""
        batch = rng.sample(samples, args.batch_size)
        start = time.perf_counter()
        loss, _ = sft_loss(engine, encoder, batch, grounding if setting != SETTINGS[2] else None)
        engine.backward(loss)
        engine.step()
        return time.perf_counter() - start

    for setting in SETTINGS:  # warm-up
        step(setting)
    times: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    for _ in range(args.repeats):
        for setting in SETTINGS:
            times[setting].append(step(setting))
    base = statistics.median(times[SETTINGS[0]])
    print(f"SFT step, demo model, batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats}:")
    for setting in SETTINGS:
        median = statistics.median(times[setting])
        spread = (max(times[setting]) - min(times[setting])) / median
        print(f"  {setting:34s} {median:6.2f} s  ({median / base:4.2f}x, spread {spread:.0%}, "
              f"{args.batch_size / median:5.1f} samples/s)")


if __name__ == "__main__":
    main()
