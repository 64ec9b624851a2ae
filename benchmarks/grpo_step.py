"""GRPO step timing with the tiny model: rollout vs reward vs update, and what sharing the image
encodings across the G completions of a prompt saves.

Run: python -m benchmarks.grpo_step [--steps N] [--group G] [--prompts P] [--image-size PX]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from training.common.config import load_config
from training.grpo import update
from training.grpo.config import GRPOConfig
from lens_model.config import GenerationConfig
from training.batches import BatchEncoder, training_dataset
from training.grpo.rollout import RolloutSampler
from training.starting_model import build_model
from training.synthetic import generate_dataset


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--completion-length", type=int, default=48)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        generate_dataset(root, num_images=max(8, args.prompts * args.steps), seed=0, size=args.image_size)
        cfg = load_config(GRPOConfig, "training/configs/grpo_tiny.yaml", [
            f"data.root={root}", f"output_dir={root}/out", f"rollout.group_size={args.group}",
            f"rollout.sampling.max_new_tokens={args.completion_length}", "objective.beta=0.04"])
        model = build_model(cfg.model).train()
        from training.grpo.trainer import reference_policy

        reference = reference_policy(model, cfg)
        # The model is its own engine here: calling it runs its forward, as the engines do.
        sample_rollout = RolloutSampler(GenerationConfig(**cfg.rollout.sampling), cfg.rollout.group_size, reference, None)
        encoder = BatchEncoder(model, 0, vision_frozen=False, sam_encoder_frozen=True)
        dataset = training_dataset(cfg.data)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        reward_ms: list[float] = []
        real_rewards = update.rewards_of

        def timed_rewards(*a, **k):
            out, ms = timed(real_rewards, *a, **k)
            reward_ms.append(ms)
            return out

        update.rewards_of = timed_rewards
        rows = {"rollout": [], "reward": [], "update": []}
        for step in range(args.steps):
            samples = [dataset[(step * args.prompts + i) % len(dataset)] for i in range(args.prompts)]
            rollout, rollout_ms = timed(sample_rollout, model, encoder, samples)
            start = time.perf_counter()
            loss, _ = update.policy_loss(model, encoder, rollout, cfg)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total_update = (time.perf_counter() - start) * 1000
            rows["rollout"].append(rollout_ms)
            rows["reward"].append(reward_ms[-1])
            rows["update"].append(total_update - reward_ms[-1])
        update.rewards_of = real_rewards
        medians = {k: statistics.median(v) for k, v in rows.items()}
        total = sum(medians.values())
        print(f"GRPO step, tiny model, {args.prompts} prompts x G={args.group}, {args.image_size}px, "
              f"<= {args.completion_length} new tokens (median of {args.steps} steps):")
        for name, ms in medians.items():
            print(f"  {name:<8} {ms:9.1f} ms  {100 * ms / total:5.1f}%")
        print(f"  total    {total:9.1f} ms")

        sample = dataset[0]
        with torch.no_grad():
            encoded = model.encode_image(sample.image)
            _, vision_ms = timed(lambda: [model.vision_embeds(encoded) for _ in range(5)])
            _, sam_ms = timed(lambda: [model.sam_features([sample.image]) for _ in range(5)])
        per_image = (vision_ms + sam_ms) / 5
        shared, unshared = per_image * args.prompts, per_image * args.prompts * args.group
        print(f"image encodings per step (reasoner vision tower + SAM 2 encoder, {per_image:.1f} ms per image):")
        print(f"  shared across the G completions  {shared:8.1f} ms")
        print(f"  once per completion              {unshared:8.1f} ms   saving x{unshared / shared:.1f}, "
              f"{100 * (unshared - shared) / (total + unshared - shared):.0f}% of an unshared step")


if __name__ == "__main__":
    main()
