"""Tiny-model inference benchmarks: per-stage latency, KV-reuse query pass, predict_many amortisation.

Run: python -m benchmarks.model_latency [--repeats N] [--model lens-synth-demo]. Numbers are for the
tiny random model on this machine's CPU (``--model`` times the per-stage latency of another model, e.g.
the shipped demo model); the ratios, not the absolute times, are what carry over to real models.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np
import torch

from lens_model.hub import build_tiny_random, load_model
from lens_model.query_pass import full_query_pass


def scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((480, 640, 3), 220, np.uint8)
    image[100:300, 80:280] = (200, 40, 40)
    return np.clip(image.astype(int) + rng.integers(-15, 15, image.shape), 0, 255).astype(np.uint8)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def stage_latency(repeats: int, model_name: str) -> None:
    model = load_model(model_name).eval()
    image = scene()
    model.predict(image, "the red square")
    results = [model.predict(image, "the red square") for _ in range(repeats)]
    tokens = statistics.median(r.generated_tokens for r in results)
    print(f"per-stage latency, {model_name}, 640x480 image, {tokens:.0f} generated tokens (median ms):")
    for stage in results[0].timings_ms:
        print(f"  {stage:<18} {statistics.median(r.timings_ms[stage] for r in results):8.2f}")


@torch.inference_mode()
def kv_reuse(repeats: int, new_tokens: int) -> None:
    model = build_tiny_random(query_positions="mrope", prompt_collapse="none").eval()
    encoded = model.encode_image(scene())
    prompts = model.encode_prompts(["the red square"], [encoded])
    vision = [model.vision_embeds(encoded)]
    grid = encoded.grid_thw
    # min_new_tokens forces a completion of fixed length, as a reasoning answer would have.
    generation = model.generate(prompts, grid, vision, keep_cache=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    cache_length = generation.cache.get_seq_length()
    queries = model.context.context_queries

    def cached():
        model.query_states(prompts, grid, vision, generation)
        generation.cache.crop(cache_length - generation.cache.get_seq_length())  # drop the query tokens again

    def full():
        full_query_pass(model.reasoner, prompts, grid, torch.cat(vision), generation.completion_ids,
                        generation.completion_attention, queries, model.processor.pad_token_id, "mrope")

    cached_ms, full_ms = median_ms(cached, repeats), median_ms(full, repeats)
    length = prompts.input_ids.shape[1] + generation.completion_ids.shape[1]
    print(f"query pass after {new_tokens} generated tokens (sequence {length} + {queries.shape[1]} queries):")
    print(f"  full re-forward  {full_ms:8.2f} ms")
    print(f"  KV-cache reuse   {cached_ms:8.2f} ms   speed-up x{full_ms / max(cached_ms, 1e-6):.2f}")
    print(f"  tokens run: {length + queries.shape[1]} (full) vs {1 + queries.shape[1]} (reuse); with a real 3B reasoner the "
          "pass is compute-bound and its cost follows the token count")


def amortisation(repeats: int, counts: tuple[int, ...], new_tokens: int = 16) -> None:
    model = build_tiny_random().eval()
    # Random weights stop at random lengths; fix the answer length so both sides generate the same work.
    generate = model.generate
    model.generate = functools.partial(generate, min_new_tokens=new_tokens)
    model.config.generation.max_new_tokens = new_tokens
    image = scene()
    queries = [f"the object number {i} from the left" for i in range(max(counts))]
    print(f"predict_many(N queries) vs N x predict, {new_tokens} generated tokens each (median ms):")
    for n in counts:
        batch = median_ms(lambda: model.predict_many(image, queries[:n]), repeats)
        single = median_ms(lambda: [model.predict(image, q) for q in queries[:n]], repeats)
        print(f"  N={n:<3} many {batch:8.1f}   singles {single:8.1f}   ratio x{single / batch:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--model", default="tiny-random", help="model for the per-stage latency (any load_model name)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); 1 is "
                        "steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stage_latency(args.repeats, args.model)
    kv_reuse(args.repeats, args.new_tokens)
    amortisation(args.repeats, (1, 4, 8))


if __name__ == "__main__":
    main()
