"""Instance-mask designs compared on the expressions that name several objects (docs/model.md).

    python -m recipes.demo.instance_masks --model DIR --data DIR [--split test --limit 100]

For the first ``--limit`` expressions of a split with two or more referents, the model answers
once and each design builds the union mask from that answer; the table gives each design's gIoU
against the union of the referents:

* ``lens + box prompts``: the LENS mask for the answer's first box, SAM 2's box prompts for the
  others (what ``LensPredictor`` returns);
* ``lens only``: the LENS mask alone;
* ``box prompts only``: SAM 2's box prompt for every box of the answer, the first included;
* ``box prompts, true boxes``: SAM 2's box prompts for the referents' true boxes (what perfect
  answers would give box prompts; a ceiling for the second design's later instances).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from lens_model import sam_head
from lens_model.checkpoints import load_model
from lens_model.predictor import LensPredictor
from lens_model.result import Box
from training.data.registry import load_dataset
from training.data.sample import Sample
from training.iou import mask_iou

DESIGNS = ("lens + box prompts", "lens only", "box prompts only", "box prompts, true boxes")


def box_prompt_union(predictor: LensPredictor, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """The union of SAM 2's box-prompted masks of ``boxes`` (original pixels); empty for no box."""
    height, width = image.shape[:2]
    if not boxes:
        return np.zeros((height, width), dtype=bool)
    model = predictor.model
    with torch.inference_mode():
        logits, _ = model.box_masks(model.sam_features([image]), boxes, (width, height), [0] * len(boxes))
    return (sam_head.upsample_logits(logits, height, width) > model.config.mask_threshold).any(0).cpu().numpy()


def design_masks(predictor: LensPredictor, sample: Sample) -> dict[str, np.ndarray]:
    result = predictor.predict(sample.image, sample.text)
    boxes = [instance.box for instance in result.instances]
    return {
        "lens + box prompts": result.mask,
        "lens only": result.instances[0].mask if result.instances else result.mask,
        "box prompts only": box_prompt_union(predictor, sample.image, boxes),
        "box prompts, true boxes": box_prompt_union(predictor, sample.image, sample.boxes),
    }


def compare(predictor: LensPredictor, samples: Iterable[Sample]) -> dict[str, float]:
    """Each design's gIoU (mean IoU over the samples) against the union of the referents."""
    ious: dict[str, list[float]] = {design: [] for design in DESIGNS}
    for sample in samples:
        for design, mask in design_masks(predictor, sample).items():
            ious[design].append(mask_iou(mask, sample.mask, sample.ignore))
    return {design: float(np.mean(values)) if values else float("nan") for design, values in ious.items()}


def several_referents(dataset, limit: int) -> list[Sample]:
    """The first ``limit`` samples of ``dataset`` with two or more referents."""
    found: list[Sample] = []
    for sample in dataset:
        if len(sample.instances) >= 2:
            found.append(sample)
            if len(found) == limit:
                break
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.instance_masks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="LENS model: built-in name, folder or a stage's output_dir")
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=100, help="expressions with several referents to score")
    args = parser.parse_args(argv)
    samples = several_referents(load_dataset(args.dataset, args.data, args.split), args.limit)
    scores = compare(LensPredictor(load_model(args.model, device="cpu")), samples)
    print(f"| design | gIoU ({len(samples)} expressions with several referents) |\n|---|---:|")
    for design, value in scores.items():
        print(f"| {design} | {100 * value:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
