"""LensPredictor: images and sentences in, masks, boxes, scores and reasoning out.

It wraps a ``LensModel`` as SAM 2's ``SAM2ImagePredictor`` wraps SAM 2: input validation, the
order of the stages, their timings and the decoding of results live here; the computation is the
model's.

    predictor = LensPredictor.from_pretrained("OuyBin/LENS", device="cuda")
    result = predictor.predict(rgb_image, "the mug nearest the sink")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens_model import sam_head
from lens_model.answer_parser import ParsedAnswer, map_box, parse_answer
from lens_model.frames import validate_image
from lens_model.modeling import Completions, LensModel
from lens_model.prompts import clean_query
from lens_model.result import Box, Instance, SegmentationResult
from lens_model.timing import StageTimer
from lens_model.tracker import LensTracker, TrackerConfig


class LensPredictor:
    def __init__(self, model: LensModel) -> None:
        self.model = model

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu", dtype: str = "auto", **overrides: Any) -> LensPredictor:
        """A predictor around ``lens_model.load_model(name_or_path, ...)``, in eval mode."""
        from lens_model.checkpoints import load_model

        return cls(load_model(name_or_path, device=device, dtype=dtype, **overrides))

    def predict(self, image: object, query: str, *, template: str | None = None,
                max_new_tokens: int | None = None) -> SegmentationResult:
        """Segment what ``query`` refers to in ``image`` (RGB uint8 HxWx3)."""
        return self.predict_many(image, [query], template=template, max_new_tokens=max_new_tokens)[0]

    @torch.inference_mode()
    def predict_many(self, image: object, queries: list[str], *, template: str | None = None,
                     max_new_tokens: int | None = None) -> list[SegmentationResult]:
        """Segment several queries on one image, sharing the vision encoding and the SAM 2 embedding.

        Stage timings in each result are those of the whole batch.
        """
        model, config = self.model, self.model.config
        image = validate_image(image)
        if not queries:
            return []
        queries = [clean_query(q, config.max_query_chars, config.preprocessing.collapse_whitespace) for q in queries]
        timer, device = StageTimer(), model.device
        height, width = image.shape[:2]
        with timer.stage("preprocess", device):
            encoded = model.encode_image(image)
        with timer.stage("vision_encoder", device):
            vision = model.vision_embeds(encoded)
        with timer.stage("preprocess", device):
            inputs = model.encode_inputs(queries, [encoded] * len(queries), [vision] * len(queries), template)
        with timer.stage("sam_image_encoder", device):
            features = model.sam_features([image])
        with timer.stage("generate", device):
            completions = model.generate(inputs, keep_cache=config.reuses_kv_cache, max_new_tokens=max_new_tokens)
        with timer.stage("query_pass", device):
            states = model(inputs, completions, return_query_states=True).query_states
        with timer.stage("mask_decoder", device):
            out = model(inputs, completions, features, rows_per_image=len(queries), query_states=states)
        with timer.stage("postprocess", device):
            masks = (sam_head.upsample_logits(out.mask_logits, height, width) > config.mask_threshold).cpu().numpy()
            answers = [self._answer(completions, i) for i in range(len(queries))]
            parsed = [parse_answer(answer) for answer, _ in answers]
            firsts = [None if p.box is None else map_box(p.box, encoded.resized_size, (width, height)) for p in parsed]
        with timer.stage("mask_decoder", device):
            extras = self._later_instances(parsed, firsts, features, encoded.resized_size, (width, height))
        with timer.stage("postprocess", device):
            results = [self._result(q, masks[i], float(out.iou_predictions[i]), parsed[i], *answers[i], firsts[i], extras[i])
                       for i, q in enumerate(queries)]
        for result in results:
            result.timings_ms = timer.with_total()
        return results

    def tracker(self, config: TrackerConfig | None = None, memory_weights: str | Path | None = None) -> LensTracker:
        """A tracker on this predictor's model (``lens_model.tracker``): a query's mask seeds it, and
        every later frame gets a mask from SAM 2 alone."""
        return LensTracker(self.model, config, memory_weights)

    def describe(self) -> dict[str, object]:
        config = self.model.config
        return {
            "name": config.name or config.reasoner,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "random_weights": config.random_weights,
            "query_positions": config.query_positions,
            "prompt_collapse": config.prompt_collapse,
            "profile": config.profile or "native",
        }

    def _answer(self, completions: Completions, row: int) -> tuple[str, int]:
        """The decoded answer of a completion row and its number of generated tokens."""
        ids = completions.ids[row][completions.attention[row].bool()].tolist()
        return self.model.processor.decode([t for t in ids if t not in self.model.eos_token_ids]).strip(), len(ids)

    def _later_instances(self, parsed: list[ParsedAnswer], firsts: list[Box | None], features: sam_head.SamImageFeatures,
                         resized: tuple[int, int], original: tuple[int, int]) -> list[list[Instance]]:
        """Per row, the answer's objects after its first, each masked by SAM 2's own box prompt (the
        first object's mask is the LENS mask); none when the first box is unusable. One decode for all."""
        wanted = [[] if first is None else [(b, label) for b, label in ((map_box(box, resized, original), label)
                                                                        for box, label in zip(p.boxes[1:], p.labels[1:]))
                                            if b is not None]
                  for p, first in zip(parsed, firsts)]
        boxes = [box for row in wanted for box, _ in row]
        if not boxes:
            return [[] for _ in parsed]
        logits, iou = self.model.box_masks(features, boxes, original, [0] * len(boxes))
        width, height = original
        masks = iter((sam_head.upsample_logits(logits, height, width) > self.model.config.mask_threshold).cpu().numpy())
        scores = iter(iou.float().clamp(0.0, 1.0).tolist())
        return [[Instance(box, next(masks), next(scores), label) for box, label in row] for row in wanted]

    def _result(self, query: str, mask: np.ndarray, iou: float, parsed: ParsedAnswer, answer: str, tokens: int,
                box: Box | None, later: list[Instance]) -> SegmentationResult:
        status = parsed.status if parsed.box is None else ("ok" if box is not None else "box outside the image")
        score = min(max(iou, 0.0), 1.0)
        instances = [] if box is None else [Instance(box, mask, score, parsed.label), *later]
        if parsed.no_target:  # the LENS mask of "nothing matches" is no target's mask
            mask = np.zeros_like(mask)
        elif later:
            mask = np.logical_or.reduce([instance.mask for instance in instances])
        return SegmentationResult(
            query=query, mask=mask, box=box, box_status=status, label=parsed.label,
            score=score, reasoning=parsed.reasoning, answer=answer,
            random_weights=self.model.config.random_weights, generated_tokens=tokens, instances=instances,
        )
