"""Samples per second of each dataset loader, on generated data written in every supported format.

    python -m benchmarks.data_loading [--images N] [--size PX] [--seed S]

Generates a synthetic set, exports its train split as ReasonSeg, GroundingSuite and JSONL (RLE and
PNG masks), then times indexing, a sequential pass (consecutive sentences share one decode, as in
evaluation) and a shuffled pass (every sample decoded, as in training) for each loader.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from training.data import TargetDataset, load_dataset
from training.data.export import write_groundingsuite, write_jsonl, write_reasonseg
from training.synthetic import generate_dataset


def _prepare(root: Path, images: int, size: int, seed: int) -> dict[str, Callable[[], TargetDataset]]:
    start = time.perf_counter()
    generate_dataset(root, num_images=images, seed=seed, size=size)
    print(f"generated {images} images of {size}x{size} in {time.perf_counter() - start:.2f} s")
    samples = list(load_dataset("synthetic", root, "train"))
    write_reasonseg(samples, root / "reason_seg" / "ReasonSeg" / "train")
    write_groundingsuite(
        samples, root / "groundingsuite" / "GroundingSuite-Eval.jsonl", root / "coco" / "unlabeled2017"
    )
    write_jsonl(samples, root / "jsonl_rle" / "train.jsonl", mask_format="rle")
    write_jsonl(samples, root / "jsonl_png" / "train.jsonl", mask_format="png")
    return {
        "synthetic (refer)": lambda: load_dataset("synthetic", root, "train"),
        "reasonseg": lambda: load_dataset("reasonseg", root, "train"),
        "groundingsuite": lambda: load_dataset("groundingsuite", root),
        "jsonl (rle masks)": lambda: load_dataset("jsonl", root / "jsonl_rle", "train"),
        "jsonl (png masks)": lambda: load_dataset("jsonl", root / "jsonl_png", "train"),
    }


def _rate(dataset: TargetDataset, order: list[int]) -> float:
    start = time.perf_counter()
    for index in order:
        dataset[index]
    return len(order) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        loaders = _prepare(Path(folder), args.images, args.size, args.seed)
        print(f"{'loader':20s} {'samples':>8s} {'index ms':>9s} {'sequential/s':>13s} {'shuffled/s':>11s}")
        for name, make in loaders.items():
            start = time.perf_counter()
            dataset = make()
            index_ms = 1000 * (time.perf_counter() - start)
            order = list(range(len(dataset)))
            sequential = _rate(dataset, order)
            random.Random(0).shuffle(order)
            shuffled = _rate(make(), order)
            print(f"{name:20s} {len(dataset):8d} {index_ms:9.1f} {sequential:13.0f} {shuffled:11.0f}")


if __name__ == "__main__":
    main()
