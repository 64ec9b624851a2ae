"""Inference benchmarks: per-stage shares, the query pass (full re-forward vs KV-cache reuse),
predict_many amortisation, and the released layout's sequence collapse.

    python -m benchmarks.model_latency [--repeats 5] [--model lens-synth-demo]      # tiny random model
    python -m benchmarks.model_latency --real-size [--dtype bf16|fp32] [--parts query,stages,many,collapse]

The default runs the tiny random model (``--model`` times the stages of another model, e.g. the shipped
demo model). ``--real-size`` runs the released architecture at full size with random weights
(``benchmarks.real_size``: Qwen2.5-VL-3B + SAM 2-L, about 9 GB in bf16 and 18 GB in fp32) on the
CPU; run it alone on the machine. Random weights stop at random lengths, so answers are forced to a
fixed length (``min_new_tokens``).

Variants are interleaved (A B A B ..., one warm-up each first), the thread count is pinned
(``--threads``, default 1), and each time is printed as the median wall time beside the median CPU
time of the process: on a loaded machine wall time stretches while CPU time does not, so a ratio
that the two agree on is trustworthy. Ratios, not absolute times, carry over to other hardware; what
carries over to a GPU is discussed in docs/model.md.
"""
from __future__ import annotations

import argparse
import functools
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import psutil
import torch
import torch.nn.functional as F

import lens_model.predictor as predictor_module
from lens_model.checkpoints import load_model
from lens_model.modeling import LensModel
from lens_model.predictor import LensPredictor
from lens_model.query_pass import cached_query_pass, embed_sequence, full_query_pass, mrope_positions

PARTS = ("stages", "query", "many", "collapse")
# Dense bf16 tensor peak and memory bandwidth from the vendors' data sheets: the authors' GPU and a current one.
GPUS = (("L40S", 362, 0.864), ("H100 SXM", 989, 3.35))
QUERY = "the red square"


def scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((480, 640, 3), 220, np.uint8)
    image[100:300, 80:280] = (200, 40, 40)
    return np.clip(image.astype(int) + rng.integers(-15, 15, image.shape), 0, 255).astype(np.uint8)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall ms, process CPU ms) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall ms, CPU ms) of each variant, run A B C A B C ... after one warm-up each."""
    for fn in variants.values():
        fn()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            samples[name].append(timed(fn))
    return {name: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for name, s in samples.items()}


def print_table(title: str, times: dict[str, tuple[float, float]], reference: str, notes: dict[str, str] | None = None) -> None:
    """Wall and CPU ms per variant, each as a speed-up over ``reference``."""
    print(title)
    ref_wall, ref_cpu = times[reference]
    for name, (wall, cpu) in times.items():
        note = f"   {notes[name]}" if notes and name in notes else ""
        print(f"  {name:<26} wall {wall:10.1f} ms  cpu {cpu:10.1f} ms   x{ref_wall / wall:6.2f} wall  x{ref_cpu / cpu:6.2f} cpu{note}")


def memory_line(label: str) -> str:
    """Resident memory now and the process's peak so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    return f"{label}: resident {psutil.Process().memory_info().rss / 2**30:.2f} GiB, peak {peak:.2f} GiB"


class CpuStageTimer(predictor_module.StageTimer):
    """The predictor's stage timer, also summing process CPU time per stage (installed by ``stage_shares``)."""

    last: "CpuStageTimer"

    def __init__(self) -> None:
        super().__init__()
        self.cpu_ms: dict[str, float] = {}
        CpuStageTimer.last = self

    @contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        start = time.process_time()
        with super().stage(name, device):
            yield
        self.cpu_ms[name] = self.cpu_ms.get(name, 0.0) + (time.process_time() - start) * 1000


def fix_answer_length(model: LensModel, tokens: int) -> None:
    """Every generation produces exactly ``tokens`` tokens (random weights stop anywhere)."""
    model.generate = functools.partial(type(model).generate, model, min_new_tokens=tokens)
    model.config.generation.max_new_tokens = tokens


@torch.inference_mode()
def stage_shares(model: LensModel, label: str, tokens: int, repeats: int) -> None:
    fix_answer_length(model, tokens)
    image, predictor = scene(), LensPredictor(model)
    predictor_module.StageTimer = CpuStageTimer
    try:
        predictor.predict(image, QUERY)  # warm-up
        runs = []
        for _ in range(repeats):
            result = predictor.predict(image, QUERY)
            runs.append((result.timings_ms, dict(CpuStageTimer.last.cpu_ms)))
    finally:
        predictor_module.StageTimer = CpuStageTimer.__base__
    stages = [s for s in runs[0][0] if s != "total"]
    wall = {s: statistics.median(r[0][s] for r in runs) for s in stages}
    cpu = {s: statistics.median(r[1][s] for r in runs) for s in stages}
    print(f"stages of predict, {label}, 640x480 image, {tokens} generated tokens (median of {repeats}):")
    for s in stages:
        print(f"  {s:<18} wall {wall[s]:10.1f} ms {100 * wall[s] / sum(wall.values()):5.1f} %"
              f"   cpu {cpu[s]:10.1f} ms {100 * cpu[s] / sum(cpu.values()):5.1f} %")
    print(f"  {'total':<18} wall {sum(wall.values()):10.1f} ms           cpu {sum(cpu.values()):10.1f} ms")


@torch.inference_mode()
def query_pass(model: LensModel, new_tokens: int, repeats: int) -> None:
    """The three query passes after a ``new_tokens``-token answer: the released one (sequential
    positions, full re-forward), the full re-forward with M-RoPE, and the M-RoPE pass reusing the
    generation's KV cache. The cache is built by one prefill of prompt + answer (what generation
    leaves, without generating: the answer's values do not change the cost)."""
    encoded = model.encode_image(scene())
    prompts = model.encode_prompts([QUERY], [encoded])
    grid = encoded.grid_thw
    hidden = model.reasoner.config.text_config.hidden_size
    vision = torch.randn(encoded.num_tokens, hidden, dtype=model.dtype)  # stands in for the vision tower
    generator = torch.Generator().manual_seed(0)
    answer = torch.randint(50, 300, (1, new_tokens), generator=generator)  # plain text ids of this tokenizer
    attention = torch.ones_like(answer)
    reasoner, queries, pad = model.reasoner, model.context.context_queries, model.processor.pad_token_id
    ids = torch.cat([prompts.input_ids, answer[:, :-1]], dim=1)
    mask = torch.cat([prompts.attention_mask, attention[:, :-1]], dim=1)
    image_positions = torch.cat([prompts.mm_token_type_ids, torch.zeros_like(answer[:, :-1])], dim=1)
    positions, deltas = mrope_positions(reasoner, ids, image_positions, grid, mask)
    out = reasoner.model.language_model(inputs_embeds=embed_sequence(reasoner, ids, image_positions, vision),
                                        attention_mask=mask, position_ids=positions, use_cache=True)
    cache, cache_length = out.past_key_values, ids.shape[1]

    def full(scheme: str) -> Callable[[], object]:
        return lambda: full_query_pass(reasoner, prompts, grid, vision, answer, attention, queries, pad, scheme)

    def cached() -> None:
        cached_query_pass(reasoner, prompts, answer, attention, cache, deltas, queries)
        cache.crop(cache_length - cache.get_seq_length())  # drop the last token and the queries again

    times = interleaved({"full, sequential (released)": full("sequential"), "full, M-RoPE": full("mrope"),
                         "KV-cache reuse, M-RoPE": cached}, repeats)
    del out
    length = prompts.input_ids.shape[1] + new_tokens
    num_queries = queries.shape[1]
    print_table(f"query pass after {new_tokens} generated tokens (prompt {prompts.input_ids.shape[1]} + answer "
                f"{new_tokens} + {num_queries} queries), speed-up over the released pass:", times,
                "full, sequential (released)",
                {"KV-cache reuse, M-RoPE": f"tokens run x{(length + num_queries) / (1 + num_queries):.1f} fewer"})
    roofline(model, length, num_queries)


def roofline(model: LensModel, length: int, num_queries: int) -> None:
    """What the two passes would take on GPUs if each ran at its roofline: max(FLOPs / peak,
    bytes read / bandwidth), with the weights read once per pass. An estimate, not a measurement."""
    text = model.reasoner.config.text_config
    language_model = model.reasoner.model.language_model
    weights = sum(p.numel() for n, p in language_model.named_parameters() if "embed_tokens" not in n)
    width, layers = text.hidden_size, text.num_hidden_layers
    kv_width = text.num_key_value_heads * width // text.num_attention_heads
    element = torch.finfo(model.dtype).bits // 8
    total = length + num_queries
    # Linear layers 2 FLOPs per weight per token; attention scores and values 4 * width per (query, key) pair.
    full_flops = 2 * weights * total + 4 * width * layers * total * total / 2
    reuse_flops = 2 * weights * (1 + num_queries) + 4 * width * layers * (1 + num_queries) * total
    full_bytes = weights * element
    reuse_bytes = full_bytes + 2 * layers * kv_width * length * element  # plus the KV cache
    for gpu, tflops, tbps in GPUS:
        full = max(full_flops / tflops / 1e12, full_bytes / tbps / 1e12) * 1000
        reuse = max(reuse_flops / tflops / 1e12, reuse_bytes / tbps / 1e12) * 1000
        print(f"  roofline on {gpu} ({tflops} TFLOP/s, {tbps} TB/s; estimate): full {full:.3f} ms, reuse {reuse:.3f} ms, "
              f"x{full / reuse:.2f}")


@torch.inference_mode()
def amortisation(model: LensModel, counts: tuple[int, ...], tokens: int, repeats: int) -> None:
    fix_answer_length(model, tokens)
    image, predictor = scene(), LensPredictor(model)
    queries = [f"the object number {i} from the left" for i in range(max(counts))]
    print(f"predict_many(N queries) vs N x predict, {tokens} generated tokens each:")
    for n in counts:
        times = interleaved({"many": lambda: predictor.predict_many(image, queries[:n]),
                             "singles": lambda: [predictor.predict(image, q) for q in queries[:n]]}, repeats)
        (many_wall, many_cpu), (single_wall, single_cpu) = times["many"], times["singles"]
        print(f"  N={n:<3} many wall {many_wall:10.1f} ms cpu {many_cpu:10.1f} ms   singles wall {single_wall:10.1f} ms "
              f"cpu {single_cpu:10.1f} ms   x{single_wall / many_wall:.2f} wall  x{single_cpu / many_cpu:.2f} cpu")


@torch.inference_mode()
def collapse(dtype: torch.dtype, repeats: int, dim: int = 2048, num_queries: int = 64) -> None:
    """The released Conv1d (kernel M over M tokens) as a convolution and as the single linear it is."""
    torch.manual_seed(0)
    weight = torch.randn(dim, dim, num_queries, dtype=dtype) * 0.02
    bias = torch.zeros(dim, dtype=dtype)
    x = torch.randn(1, num_queries, dim, dtype=dtype)
    conv = lambda: F.conv1d(x.transpose(1, 2), weight, bias)  # noqa: E731
    linear = lambda: F.linear(x.transpose(1, 2).reshape(1, -1), weight.view(dim, -1), bias)  # noqa: E731
    difference = (conv()[..., 0] - linear()).abs().max().item()
    times = interleaved({"Conv1d": conv, "one linear": linear}, repeats)
    print_table(f"sequence collapse {dim}x{dim}x{num_queries} ({str(dtype).replace('torch.', '')}), one sample; "
                f"max |difference| {difference:.2e}:", times, "Conv1d")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-size", action="store_true", help="Qwen2.5-VL-3B + SAM 2-L, random weights")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", default="32,128", help="answer lengths for the query pass")
    parser.add_argument("--stage-tokens", type=int, default=32, help="answer length for the stages and predict_many")
    parser.add_argument("--many", default="1,4,8", help="query counts for predict_many")
    parser.add_argument("--model", default="tiny-random", help="model for the stages (any load_model name; tiny mode)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned; 1 is steadiest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(f"{torch.get_num_threads()} thread(s); {args.repeats} repeats, variants interleaved")
    if "collapse" in parts:
        collapse(dtype, args.repeats)
    if not {"query", "stages", "many"} & set(parts):
        return
    start = time.perf_counter()
    if args.real_size:
        from benchmarks.real_size import build_real_size

        model, label = build_real_size(dtype), f"Qwen2.5-VL-3B + SAM 2-L, {args.dtype}, random weights"
    else:
        model, label = load_model(args.model).to(dtype), f"{args.model}, {args.dtype}"
    print(f"{label}: built in {time.perf_counter() - start:.0f} s; {memory_line('memory after load')}")
    if "query" in parts:
        for tokens in (int(t) for t in args.new_tokens.split(",")):
            query_pass(model, tokens, args.repeats)
    if "stages" in parts:
        stage_shares(model, label, args.stage_tokens, args.repeats)
    if "many" in parts:
        amortisation(model, tuple(int(n) for n in args.many.split(",")), args.stage_tokens, args.repeats)
    print(memory_line("memory at the end"))


if __name__ == "__main__":
    main()
