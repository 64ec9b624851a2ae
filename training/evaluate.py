"""Evaluate a LENS model: gIoU, cIoU, box accuracy, parse failures and generated length.

    python -m training.evaluate --model ID_OR_PATH --data DIR --dataset refcoco --split val \
        [--output results.json] [--limit N] [--batch-size 8] [--device cuda] [--group-by KEY] \
        [--protocol corrected|paper]
    python -m training.evaluate --task tracking --model ID_OR_PATH --data DIR [--track-mode box|memory] ...

Every referring expression is one sample, scored at the original image resolution against the
binarised ground truth with ignore regions excluded (see ``training.metrics``); ``--protocol paper``
scores as the authors' evaluation did instead (``training.protocol``). Expressions of one
image are predicted together (``predict_many`` shares the image encodings). Partial results are
saved atomically every few batches next to the output, so an evaluation that dies resumes where
it stopped. Under a distributed launcher each rank scores every world_size-th sample and rank 0
merges the results. ``--group-by KEY`` also reports the metrics per value of a dataset's per-query
field (ReasonSeg ``is_sentence``: long vs short queries; synthetic ``expression_type``).

``--task tracking`` evaluates the tracker instead, on the synthetic videos of
``python -m training.synthetic --videos N`` (``training.track_eval``): mean IoU over frames, lost
rate and identity switches at crossings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import numpy as np
from tqdm import tqdm

from lens_model.predictor import LensPredictor
from lens_model.prompts import TEMPLATES
from lens_model.tracker import TrackMode
from training.common import distributed
from training.data.registry import DATASET_NAMES, load_dataset
from training.data.sample import Sample
from training.metrics import SegmentationMeter
from training.protocol import PROTOCOLS, Planned, Protocol, check_supported, paper_model_config, plan, prepare, score_mask
from training.track_eval import SEED_FROM, format_tracking, run_tracking
from training.track_metrics import summarize

TASKS = ("segmentation", "tracking")
PERCENT_KEYS = ("gIoU", "cIoU", "box_iou", "box_accuracy", "parse_failure_rate", "N_acc", "T_acc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="built-in name, checkpoint folder or hub id")
    parser.add_argument("--data", required=True, help="data root (see docs/datasets.md)")
    parser.add_argument("--task", choices=TASKS, default="segmentation",
                        help="segmentation: the referring-segmentation metrics; tracking: the tracker on synthetic videos")
    parser.add_argument("--dataset", choices=DATASET_NAMES, help="required for --task segmentation")
    parser.add_argument("--split", default=None, help="val, testA, testB, test, train, eval ...")
    parser.add_argument("--output", default=None, help="results JSON (default: eval_<dataset>_<split>.json)")
    parser.add_argument("--limit", type=int, default=None, help="score at most N expressions")
    parser.add_argument("--batch-size", type=int, default=8, help="expressions of one image predicted together")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--template", choices=sorted(TEMPLATES), default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--save-every", type=int, default=20, help="save partial results every N batches")
    parser.add_argument("--restart", action="store_true", help="ignore saved partial results")
    parser.add_argument("--group-by", default=None, metavar="KEY",
                        help="also report metrics per value of this per-query field (e.g. is_sentence, expression_type)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="corrected",
                        help="corrected: this project's metrics; paper: the authors' evaluation, to compare with "
                             "the paper's tables (see docs/training.md)")
    tracking = parser.add_argument_group("tracking (--task tracking)")
    tracking.add_argument("--track-mode", choices=get_args(TrackMode), default="box")
    tracking.add_argument("--memory-weights", default=None, help="memory mode: SAM 2 .pt or memory .safetensors")
    tracking.add_argument("--seed-from", choices=SEED_FROM, default="query",
                          help="query: the first frame's query seeds the track; gt: the true mask does")
    tracking.add_argument("--frames", type=int, default=None, help="score at most T frames of each video")
    tracking.add_argument("--min-seed-iou", type=float, default=0.5,
                          help="also report the videos whose seed mask has at least this IoU on frame 0")
    return parser


def image_batches(samples: Iterator[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Consecutive samples of the same image, at most ``batch_size`` at a time."""
    batch: list[Sample] = []
    for sample in samples:
        if batch and (sample.image_id != batch[0].image_id or len(batch) == batch_size):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


def group_label(sample: Sample, key: str) -> str:
    """The sample's value of ``meta[key]`` as a group label ("missing" when it has none)."""
    value = sample.meta.get(key)
    return "missing" if value is None else str(value).lower()


def answered_something(result) -> bool:
    """False when the answer is "nothing matches": the no_target status, or an empty mask (what a consumer of
    the mask sees either way)."""
    return result.status != "no_target" and bool(result.mask.any())


def score(meter: SegmentationMeter, sample: Sample, result, group_by: str | None = None,
          protocol: Protocol = "corrected", dataset=None, planned: Planned | None = None) -> None:
    answered = answered_something(result)
    prediction = result.mask if answered else np.zeros_like(result.mask)  # "nothing" scores as an empty mask
    score_mask(meter, protocol, dataset, planned, sample, prediction)
    has_target = bool(sample.mask.any())
    meter.add_presence(sample.sample_id, has_target, answered)
    if has_target and len(sample.instances) <= 1:  # one box to compare: multi- and no-target expressions have none
        meter.add_box(sample.sample_id, result.box, sample.box)
    meter.add_generation(sample.sample_id, result.status != "no_box", result.generated_tokens)
    if group_by is not None:
        meter.add_group(sample.sample_id, group_label(sample, group_by))


def run_evaluation(predictor: LensPredictor, dataset, meter: SegmentationMeter, *, limit: int | None = None, batch_size: int = 8,
                   template: str | None = None, max_new_tokens: int | None = None, rank: int = 0, world_size: int = 1,
                   on_batch=None, progress: bool = True, group_by: str | None = None,
                   protocol: Protocol = "corrected") -> SegmentationMeter:
    """Score every not-yet-scored sample of this rank's shard into ``meter`` (``protocol``: which
    samples and how, ``training.protocol``; the model's settings are the caller's to choose)."""
    check_supported(protocol, dataset)
    planned = plan(dataset, protocol, limit, rank, world_size)
    origin: dict[str, Planned] = {}

    def pending() -> Iterator[Sample]:
        for item in planned:
            sample = dataset[item.index]
            if sample is None:
                continue
            sample = prepare(sample, item, protocol, dataset)
            if sample.sample_id not in meter:
                origin[sample.sample_id] = item
                yield sample

    bar = tqdm(total=len(planned), initial=len(meter), desc="evaluate", unit="expr", disable=not progress)
    for batch in image_batches(pending(), batch_size):
        results = predictor.predict_many(batch[0].image, [s.text for s in batch], template=template,
                                         max_new_tokens=max_new_tokens)
        for sample, result in zip(batch, results):
            score(meter, sample, result, group_by, protocol, dataset, origin.pop(sample.sample_id))
        summary = meter.summary()
        # refresh=False: the update below redraws, at most once per mininterval (TQDM_MININTERVAL in logs)
        bar.set_postfix(gIoU=f"{100 * (summary['gIoU'] or 0):.1f}", cIoU=f"{100 * (summary['cIoU'] or 0):.1f}",
                        refresh=False)
        bar.update(len(batch))
        if on_batch is not None:
            on_batch(meter)
    bar.close()
    return meter


def format_table(summary: dict[str, Any], title: str) -> str:
    rows = [(key, f"{100 * value:.2f}" if key in PERCENT_KEYS and value is not None else
             ("-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)))
            for key, value in summary.items()]
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * (width + 12)] + [f"{k:<{width}}  {v:>9}" for k, v in rows]
    return "\n".join(lines)


def format_group_table(by_group: dict[str, dict[str, Any]], key: str) -> str:
    """One line per group: expressions, gIoU, cIoU, box accuracy (percent)."""
    width = max([len(key)] + [len(label) for label in by_group])
    lines = [f"{key:<{width}}  {'n':>6}  {'gIoU':>6}  {'cIoU':>6}  {'box acc':>7}"]
    for label, metrics in by_group.items():
        values = [f"{100 * metrics[k]:.2f}" if metrics[k] is not None else "-" for k in ("gIoU", "cIoU", "box_accuracy")]
        lines.append(f"{label:<{width}}  {metrics['num_expressions']:>6}  {values[0]:>6}  {values[1]:>6}  {values[2]:>7}")
    return "\n".join(lines)


class PartialResults:
    """Atomic save/load of a rank's partial meter, tied to the run it belongs to."""

    def __init__(self, output: Path, run: dict[str, Any], rank: int) -> None:
        self.path = output.with_name(output.name + f".partial.rank{rank}.json")
        self.run = run

    def load(self) -> SegmentationMeter | None:
        if not self.path.is_file():
            return None
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if data.get("run") != self.run:
            raise SystemExit(f"{self.path} holds partial results of a different run ({data.get('run')}); "
                             "pass --restart to discard them")
        return SegmentationMeter.from_dict(data["meter"])

    def save(self, meter: SegmentationMeter) -> None:
        write_json_atomic(self.path, {"run": self.run, "meter": meter.to_dict()})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task == "tracking":
        return tracking_main(args)
    if args.dataset is None:
        parser.error("--dataset is required for --task segmentation")
    from lens_model.errors import LensError
    from lens_model.checkpoints import load_model

    if distributed.launcher_env().world_size > 1 and not distributed.is_distributed():
        import torch.distributed as dist

        dist.init_process_group(distributed.default_backend())
    rank, world = distributed.rank(), distributed.world_size()
    device = args.device
    if device == "cuda" and world > 1:  # one GPU per rank
        device = f"cuda:{distributed.local_rank()}"
        import torch

        torch.cuda.set_device(device)
    output = Path(args.output or f"eval_{args.dataset}_{args.split or 'all'}.json")
    run = {"model": args.model, "dataset": args.dataset, "split": args.split, "data": str(Path(args.data).resolve()),
           "template": args.template, "max_new_tokens": args.max_new_tokens, "limit": args.limit,
           **({"group_by": args.group_by} if args.group_by else {}),
           **({"protocol": args.protocol} if args.protocol != "corrected" else {})}
    try:
        dataset = load_dataset(args.dataset, args.data, args.split, per="sentence")
        check_supported(args.protocol, dataset)
        model = load_model(args.model, device=device, dtype=args.dtype)
    except (LensError, OSError, ValueError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    if args.protocol == "paper":
        model.config = paper_model_config(model.config, dataset)
    if model.config.random_weights:
        print("WARNING: evaluating a model with RANDOM weights.", file=sys.stderr)
    partial = PartialResults(output, run, rank)
    meter = (None if args.restart else partial.load()) or SegmentationMeter()
    batches = {"n": 0}

    def checkpoint(m: SegmentationMeter) -> None:
        batches["n"] += 1
        if batches["n"] % args.save_every == 0:
            partial.save(m)

    run_evaluation(LensPredictor(model), dataset, meter, limit=args.limit, batch_size=args.batch_size, template=args.template,
                   max_new_tokens=args.max_new_tokens, rank=rank, world_size=world, on_batch=checkpoint,
                   progress=distributed.is_main(), group_by=args.group_by, protocol=args.protocol)
    partial.save(meter)
    meters = distributed.all_gather_object(meter)
    if distributed.is_main():
        merged = SegmentationMeter(box_threshold=meter.box_threshold)
        for other in meters:
            merged.merge(other)
        summary = merged.summary()
        title = f"{args.model} on {args.dataset} {args.split or ''} ({summary['num_expressions']} expressions)"
        print(format_table(summary, title))
        results = {"run": run, "metrics": summary, "skipped": dict(dataset.skips.counts),
                   "random_weights": model.config.random_weights}
        if args.group_by is not None:
            results["by_group"] = merged.summary_by_group()
            print(format_group_table(results["by_group"], args.group_by))
        write_json_atomic(output, results)
        print(f"wrote {output}")
    distributed.barrier()
    partial.remove()
    return 0


def tracking_main(args: argparse.Namespace) -> int:
    """``--task tracking``: seed a track on every video's first frame, step it through the rest, score it."""
    from lens_model.checkpoints import load_model
    from lens_model.errors import LensError
    from lens_model.tracker import TrackerConfig
    from training.data.skips import BrokenEntry
    from training.data.videos import read_videos

    output = Path(args.output or f"eval_tracking_{args.track_mode}.json")
    run = {"task": "tracking", "model": args.model, "data": str(Path(args.data).resolve()), "mode": args.track_mode,
           "memory_weights": args.memory_weights, "seed_from": args.seed_from, "limit": args.limit, "frames": args.frames}
    try:
        videos = read_videos(args.data)[: args.limit]
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        scores, step_ms = run_tracking(LensPredictor(model), videos, TrackerConfig(mode=args.track_mode),
                                       args.memory_weights, args.seed_from, args.frames)
    except (LensError, OSError, ValueError, BrokenEntry) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    summary = summarize(scores, args.min_seed_iou)
    print(format_tracking(summary, f"{args.model}, {args.track_mode} mode, seeded from the {args.seed_from} "
                                   f"({len(videos)} videos; median step {step_ms or 0:.1f} ms)"))
    write_json_atomic(output, {"run": run, "metrics": summary, "median_step_ms": step_ms,
                               "videos": [score.to_dict() for score in scores],
                               "random_weights": model.config.random_weights})
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
