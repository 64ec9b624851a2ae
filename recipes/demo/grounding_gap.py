"""Does a reasoner's box come from the image? The grounding diagnostic of recipes/demo/RESEARCH_LOG.md.

    python -m recipes.demo.grounding_gap --model DIR --data DIR [--split val --limit 32 --generate 24]

Two numbers on the first ``--limit`` expressions of a split, with the teacher answers of the
model's template:

* **coordinate gap**: the mean negative log-likelihood of the answer's number tokens when the
  reasoner sees another image's vision features (the batch rolled by one) minus that with its own.
  Zero means the numbers come from the text alone (typical positions, size words); a localising
  model shows a gap of the order of nats. Teacher-forced, so it moves long before greedy answers do.
* **box accuracy** and mean box IoU of greedy answers on the first ``--generate`` expressions.
* for reasoning that opens by listing the scene's shapes (the synthetic template), how well those
  greedy answers describe the scene: the share with as many shapes as the scene has, the share of
  listed shapes whose centre lies within ``--radius`` px of a real one ("located"), and for those
  whether size, colour and kind match that shape. This tells which skill a reasoner trained from
  scratch still lacks: finding the shapes, or naming them. The teacher's points are in image pixels
  and the model's in its resized frame, the same numbers when the reasoner sees the image at its own
  size (the demo model: 112 px).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections.abc import Sequence

import numpy as np
import torch

from lens_model.checkpoints import load_model
from lens_model.modeling import LensModel
from lens_model.predictor import LensPredictor
from training.batches import BatchEncoder
from training.data.registry import load_dataset
from training.data.sample import Sample
from training.data.synthetic_expressions import ListedShape, parse_scene_listing
from training.iou import box_iou

NUMBER = re.compile(r"\s*\d+")


@torch.no_grad()
def coordinate_nll(model: LensModel, samples: list[Sample], template: str, shift: int = 0) -> float:
    """Mean NLL of the number tokens of the teacher answers, sample i seeing the vision features of
    sample (i + shift) mod n."""
    batch = BatchEncoder(model, 0, vision_frozen=False, sam_encoder_frozen=True).encode(samples, template, with_sam_features=False)
    answers = model.encode_completions(batch.teacher_answers(template))
    vision = batch.inputs.vision[shift:] + batch.inputs.vision[:shift]
    logprobs = model(dataclasses.replace(batch.inputs, vision=vision), answers, return_logprobs=True).logprobs
    tokenizer = model.processor.tokenizer
    values = [-float(logprobs[row, t]) for row in range(len(samples)) for t in range(int(answers.attention[row].sum()))
              if NUMBER.fullmatch(tokenizer.decode([int(answers.ids[row, t])]))]
    if not values:
        raise ValueError("the teacher answers hold no number tokens")
    return float(np.mean(values))


def listing_scores(pairs: Sequence[tuple[list[ListedShape], list[ListedShape]]], radius: float) -> dict[str, float]:
    """Scene-listing quality over (generated, teacher) listings; each generated shape is compared
    with the nearest teacher shape."""
    count_right = located = listed = 0
    attributes = {"size": 0, "color": 0, "shape": 0}
    for generated, truth in pairs:
        count_right += len(generated) == len(truth)
        listed += len(generated)
        for shape in generated:
            nearest = min(truth, key=lambda t: math.dist(t.center, shape.center))
            if math.dist(nearest.center, shape.center) <= radius:
                located += 1
                for name in attributes:
                    attributes[name] += getattr(shape, name) == getattr(nearest, name)
    return {"listing_count_right": count_right / len(pairs), "listing_located": located / max(listed, 1),
            **{f"listing_{name}_right": hits / located if located else float("nan") for name, hits in attributes.items()}}


@torch.no_grad()
def greedy_scores(model: LensModel, samples: list[Sample], radius: float) -> dict[str, float]:
    """Box accuracy and mean IoU of greedy answers; the listing scores where the teacher lists the scene."""
    ious, pairs = [], []
    predictor = LensPredictor(model)
    for sample in samples:
        result = predictor.predict(sample.image, sample.text)
        ious.append(box_iou(result.box, sample.box))
        truth = parse_scene_listing(sample.reasoning or "")
        if truth:
            pairs.append((parse_scene_listing(result.reasoning), truth))
    scores = {"generated": len(ious),
              "box_accuracy": float(np.mean([iou >= 0.5 for iou in ious])) if ious else float("nan"),
              "mean_box_iou": float(np.mean(ious)) if ious else float("nan")}
    return {**scores, **(listing_scores(pairs, radius) if pairs else {})}


def grounding_gap(model: LensModel, samples: list[Sample], generate: int, radius: float = 7.0) -> dict[str, float]:
    if len({s.image_id for s in samples}) < 2:
        raise ValueError("the gap needs expressions on at least two different images")
    model.eval()
    template = model.config.template
    own = coordinate_nll(model, samples, template)
    other = coordinate_nll(model, samples, template, shift=1)
    return {"expressions": len(samples), "coordinate_nll_own": own, "coordinate_nll_other": other,
            "coordinate_gap": other - own, **greedy_scores(model, samples[:generate], radius)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.grounding_gap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="LENS model: built-in name, folder or a stage's output_dir")
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--split", default="val")
    parser.add_argument("--template", default=None, help="prompt template (default: the model's)")
    parser.add_argument("--limit", type=int, default=32, help="expressions for the gap (every 10th of the split)")
    parser.add_argument("--generate", type=int, default=24, help="of those, expressions answered greedily")
    parser.add_argument("--radius", type=float, default=7.0, help="px: a listed shape this close to a real centre is located")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = load_model(args.model, device="cpu", **({"template": args.template} if args.template else {}))
    dataset = load_dataset(args.dataset, args.data, args.split, per="sentence")
    # Every 10th expression, so that consecutive expressions of one image do not fill the sample.
    samples = [s for s in (dataset[i] for i in range(0, len(dataset), 10)) if s is not None][:args.limit]
    print(json.dumps(grounding_gap(model, samples, args.generate, args.radius), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
