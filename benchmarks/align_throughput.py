"""Alignment-stage training throughput of the tiny model, split into phases, with and without the
frozen-feature cache.

    python -m benchmarks.align_throughput [--repeats 5] [--batch-size 4] [--sizes 128 256] [--threads N]

Each measured step is the real one: ``training.align.align_loss`` through ``training.batches.BatchEncoder``,
then the torch engine's backward and AdamW step on the context module, with the frozen parts in the
modes the stage uses. The model's own methods are wrapped with timers to split the step into phases
(the rest of ``align_step``, i.e. the image processor, the tokenizer and the teacher answers, is
"inputs"). Batches hold one sample per image of a synthetic data set (``training.synthetic``).

"cache on" is the steady state in which every image of the batch is already cached (an epoch after
the first, when the cache holds the whole data set); under shuffling the saving scales with the hit
rate, about ``cache_size / number of images``. Times are medians over the repeats, with the cache-off
and cache-on steps interleaved; the spread is printed so that noisy numbers can be recognised. On a
busy shared machine ``--threads 1`` gives steadier numbers than torch's default thread count.
"""
from __future__ import annotations

import argparse
import functools
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

from lens_model.modeling import LensModel
from lens_model.tiny import build_tiny_random
from training import align
from training.batches import BatchEncoder
from training.common.engine import Engine, build_engine
from training.common.schema import EngineConfig
from training.data.registry import load_dataset
from training.data.sample import Sample
from training.losses import MaskLossWeights
from training.loop import set_train_modes, trainable_parameters
from training.synthetic import generate_dataset

PHASES = {
    "inputs": "inputs (processor, tokenizer)",
    "sam_image_encoder": "SAM 2 image encoder",
    "vision_encoder": "reasoner vision encoder",
    "reasoner_forward": "reasoner forward + queries",
    "mask_decoder_loss": "mask decoder + loss",
    "backward_optimizer": "backward + optimizer",
}
NOISY_SPREAD = 0.25  # step-time spread above which a warning is printed


class PhaseClock:
    """Seconds spent in each phase during one step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def timed(self, phase: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start

        return run


def instrumented_model(clock: PhaseClock) -> LensModel:
    """The tiny model with its encoder, reasoner and decoder entry points timed."""
    model = build_tiny_random()
    model.sam_features = clock.timed("sam_image_encoder", model.sam_features)
    model.vision_embeds = clock.timed("vision_encoder", model.vision_embeds)
    model._query_pass = clock.timed("reasoner_forward", model._query_pass)  # the query pass inside forward
    model._masks = clock.timed("mask_decoder_loss", model._masks)
    return model


def one_sample_per_image(root: Path, count: int) -> list[Sample]:
    dataset = load_dataset("synthetic", root, "train", per="ref", rng=random.Random(0))
    chosen: dict[str, Sample] = {}
    for index in range(len(dataset)):
        sample = dataset[index]
        if sample is not None and sample.image_id not in chosen:
            chosen[sample.image_id] = sample
        if len(chosen) == count:
            return list(chosen.values())
    raise RuntimeError(f"the synthetic train split has fewer than {count} images")


def timed_step(model: LensModel, engine: Engine, encoder: BatchEncoder, samples: list[Sample],
               clock: PhaseClock) -> dict[str, float]:
    """Phase seconds of one training step on ``samples``."""
    clock.seconds.clear()
    start = time.perf_counter()
    with engine.autocast():
        loss, _ = align.align_loss(engine, encoder, samples, MaskLossWeights())
    forward_end = time.perf_counter()
    engine.backward(loss)
    engine.step()
    end = time.perf_counter()
    phases = dict(clock.seconds)
    phases["inputs"] = (forward_end - start) - sum(phases.values())
    phases["backward_optimizer"] = end - forward_end
    return phases


def interleaved_runs(model: LensModel, engine: Engine, encoders: dict[str, BatchEncoder], samples: list[Sample],
                     clock: PhaseClock, repeats: int) -> dict[str, list[dict[str, float]]]:
    """``repeats`` steps per encoder after one warm-up step each (which fills a cache); the settings
    alternate step by step so that load from other processes hits them alike."""
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in encoders}
    for repeat in range(repeats + 1):
        for label, encoder in encoders.items():
            phases = timed_step(model, engine, encoder, samples, clock)
            if repeat > 0:
                runs[label].append(phases)
    return runs


@dataclass
class Summary:
    phases: dict[str, float]  # median seconds of each phase
    step: float  # median seconds of a whole step
    spread: float  # (max - min) / median of the step time

    def share(self, phase: str) -> float:
        return self.phases[phase] / sum(self.phases.values())


def summarise(runs: list[dict[str, float]]) -> Summary:
    totals = [sum(r.values()) for r in runs]
    median = statistics.median(totals)
    phases = {phase: statistics.median(r.get(phase, 0.0) for r in runs) for phase in PHASES}
    return Summary(phases, median, (max(totals) - min(totals)) / median)


def measure(size: int, batch_size: int, repeats: int) -> dict[str, Summary]:
    """Cache-off and cache-on steps on ``batch_size`` synthetic images of ``size`` px."""
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp), num_images=4 * batch_size, seed=0, size=size)
        samples = one_sample_per_image(Path(tmp), batch_size)
    clock = PhaseClock()
    torch.manual_seed(0)
    model = instrumented_model(clock)
    engine = build_engine(model, trainable_parameters(model, ["context."]), EngineConfig(device="cpu", lr=1e-4),
                          total_steps=10 * (repeats + 1))
    set_train_modes(model)
    encoded = model.encode_image(samples[0].image)
    width, height = encoded.resized_size
    print(f"\nimages {size}x{size} px -> reasoner {width}x{height} ({encoded.num_tokens} vision tokens), "
          f"SAM 2 at {model.config.sam_image_size} px; batch {batch_size}; median of {repeats} steps")
    encoders = {label: BatchEncoder(model, cache_size, vision_frozen=True, sam_encoder_frozen=True)
                for label, cache_size in (("cache off", 0), ("cache on", batch_size))}
    # The segmentation loss is timed with the mask decoder; align_step looks it up in its module.
    with mock.patch.object(align, "segmentation_loss", clock.timed("mask_decoder_loss", align.segmentation_loss)):
        runs = interleaved_runs(model, engine, encoders, samples, clock, repeats)
    return {label: summarise(r) for label, r in runs.items()}


def report(results: dict[str, Summary], batch_size: int) -> None:
    off, on = results["cache off"], results["cache on"]
    print(f"  {'phase':<30} {'cache off ms':>12} {'share':>6} {'cache on ms':>12} {'share':>6}")
    for phase, name in PHASES.items():
        print(f"  {name:<30} {1e3 * off.phases[phase]:12.1f} {off.share(phase):6.1%} "
              f"{1e3 * on.phases[phase]:12.1f} {on.share(phase):6.1%}")
    print(f"  {'whole step':<30} {1e3 * off.step:12.1f} {'':>6} {1e3 * on.step:12.1f}")
    print(f"  samples/s: cache off {batch_size / off.step:.2f}, cache on {batch_size / on.step:.2f}, "
          f"speed-up x{off.step / on.step:.2f}")
    print(f"  frozen SAM 2 image encoder: {off.share('sam_image_encoder'):.1%} of the uncached step "
          f"(frozen encoders together: {off.share('sam_image_encoder') + off.share('vision_encoder'):.1%})")
    worst = max(off.spread, on.spread)
    print(f"  step-time spread (max-min)/median: {worst:.0%}"
          + (" -- noisy: this machine is shared; rerun or raise --repeats" if worst > NOISY_SPREAD else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.align_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="measured steps per setting (default 5)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step, one per image (default 4)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="synthetic image sides in px")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"alignment step, tiny random model, CPU, {torch.get_num_threads()} torch threads")
    results = {}
    for size in args.sizes:
        results[size] = measure(size, args.batch_size, args.repeats)
        report(results[size], args.batch_size)
    if len(results) > 1:
        small, large = results[min(results)], results[max(results)]
        print(f"\n{max(results)} px vs {min(results)} px images: step time "
              f"x{large['cache off'].step / small['cache off'].step:.2f} without cache, "
              f"x{large['cache on'].step / small['cache on'].step:.2f} with cache")
    print("These are tiny-model shares on CPU; with Qwen2.5-VL-3B and SAM 2 Hiera-L at 1024 px the balance differs, "
          "so measure there before relying on the cache.")


if __name__ == "__main__":
    main()
