"""LensModel: reasoner (Qwen2.5-VL) + context module + SAM 2 mask head, and the inference API."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lens_model import sam_head
from lens_model.answer_parser import map_box, parse_answer
from lens_model.config import LensConfig
from lens_model.context import ContextModule
from lens_model.decoding import generate_kwargs
from lens_model.errors import InputError
from lens_model.processor import EncodedImage, EncodedPrompts, ReasonerProcessor
from lens_model.prompts import clean_query
from lens_model.query_pass import cached_query_pass, completion_mask, full_query_pass
from lens_model.result import SegmentationResult

MAX_IMAGE_SIDE = 16384


@dataclass
class Generation:
    """Sampled completions for a batch of prompts, with what the query pass needs from generation."""

    completion_ids: torch.Tensor  # (B, T), padded after each row's end of sequence
    completion_attention: torch.Tensor  # (B, T), 1 up to and including the end-of-sequence token
    cache: object | None
    rope_deltas: torch.Tensor | None


class StageTimer:
    """Wall-clock milliseconds per named stage (synchronising CUDA so GPU time is attributed)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0


def validate_image(image: object) -> np.ndarray:
    """Accept an RGB uint8 HxWx3 array (or a PIL image); reject anything else with a clear message."""
    if hasattr(image, "convert") and hasattr(image, "size"):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be an RGB numpy array or PIL image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must have shape HxWx3 (RGB), got {image.shape}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8, got {image.dtype}")
    h, w = image.shape[:2]
    if h < 2 or w < 2 or h > MAX_IMAGE_SIDE or w > MAX_IMAGE_SIDE:
        raise InputError(f"image size {w}x{h} is outside the supported range 2..{MAX_IMAGE_SIDE}")
    return np.ascontiguousarray(image)


class LensModel(nn.Module):
    """LENS for inference and training. Build it with :meth:`from_pretrained` or ``lens_model.hub``."""

    def __init__(self, config: LensConfig, reasoner: nn.Module, processor: ReasonerProcessor, sam: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.reasoner = reasoner
        self.processor = processor
        hidden = reasoner.config.text_config.hidden_size
        self.context = ContextModule(hidden, config.num_queries, config.connector, collapse=config.prompt_collapse == "conv1d")
        self.sam = sam

    def _apply(self, fn, recurse: bool = True):
        """Casts (``.to``, ``.bfloat16()``, DeepSpeed's) keep SAM 2's Fourier position matrix in fp32:
        SAM 2 multiplies fp32 coordinates by it, so a bf16 copy fails (and would lose precision)."""
        super()._apply(fn, recurse)
        pe = self.sam.sam_prompt_encoder.pe_layer
        pe.positional_encoding_gaussian_matrix = pe.positional_encoding_gaussian_matrix.float()
        return self

    def forward(self, step, *args, **kwargs):
        """Run ``step(self, *args, **kwargs)`` as this module's forward.

        Training stages call ``model(step, ...)`` (or ``engine(step, ...)``) so that engines which act
        in forward hooks see the whole computation: DeepSpeed ZeRO-3 gathers the parameters listed by
        :meth:`externally_read_parameters` around it.
        """
        return step(self, *args, **kwargs)

    def externally_read_parameters(self) -> list[nn.Parameter]:
        """Parameters read directly, outside the forward of the module that owns them (ZeRO-3 must
        be told: ``deepspeed.zero.register_external_parameter``)."""
        decoder, prompt_encoder = self.sam.sam_mask_decoder, self.sam.sam_prompt_encoder
        params = [self.context.context_queries, self.sam.no_mem_embed, prompt_encoder.no_mask_embed.weight,
                  decoder.iou_token.weight, decoder.mask_tokens.weight]
        if getattr(decoder, "pred_obj_scores", False):
            params.append(decoder.obj_score_token.weight)
        return params

    # ------------------------------------------------------------------ building blocks
    @property
    def device(self) -> torch.device:
        return self.context.context_queries.device

    @property
    def dtype(self) -> torch.dtype:
        return self.context.context_queries.dtype

    @property
    def eos_token_ids(self) -> list[int]:
        """The tokens that end an answer: the checkpoint's generation config's, else the tokenizer's."""
        return self.config.generation.eos_token_ids or self.processor.eos_token_ids

    def encode_image(self, image: np.ndarray) -> EncodedImage:
        return self.processor.encode_image(image, self.config.preprocessing.reasoner_longest_side)

    def vision_embeds(self, encoded: EncodedImage, reasoner: nn.Module | None = None) -> torch.Tensor:
        """Vision-tower features for one image: (num_tokens, C). ``reasoner`` defaults to the model's own."""
        reasoner = reasoner if reasoner is not None else self.reasoner
        pixels = encoded.pixel_values.to(self.device, reasoner.model.visual.dtype)
        out = reasoner.model.get_image_features(pixels, encoded.grid_thw.to(self.device), return_dict=True)
        return out.pooler_output[0]

    def sam_features(self, images: list[np.ndarray]) -> sam_head.SamImageFeatures:
        resize = self.config.preprocessing.sam_resize
        pixels = torch.stack([sam_head.preprocess(img, self.config.sam_image_size, resize) for img in images])
        return sam_head.encode_images(self.sam, pixels.to(self.device, self.dtype))

    def encode_prompts(self, queries: list[str], encoded: list[EncodedImage], template: str | None = None) -> EncodedPrompts:
        template = template or self.config.template
        # A custom instruction belongs to the template the model was trained with.
        instruction = self.config.instruction if template == self.config.template else ""
        texts = [self.processor.render(q, template, self.config.system_prompt, instruction) for q in queries]
        prompts = self.processor.encode_prompts(texts, [e.num_tokens for e in encoded])
        return EncodedPrompts(*(t.to(self.device) for t in (prompts.input_ids, prompts.attention_mask, prompts.mm_token_type_ids)))

    def generate(
        self,
        prompts: EncodedPrompts,
        grid_thw: torch.Tensor,
        vision: list[torch.Tensor],
        num_return_sequences: int = 1,
        keep_cache: bool = False,
        **overrides,
    ) -> Generation:
        """Generate answers; ``vision`` holds one precomputed feature tensor per prompt row. ``overrides``
        replace decoding settings (``lens_model.decoding.generate_kwargs``)."""
        settings = generate_kwargs(self.config.generation, prompts.input_ids.shape[1],
                                   self.processor.placeholder_token_ids, **overrides)
        out = self.reasoner.generate(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            mm_token_type_ids=prompts.mm_token_type_ids,
            image_grid_thw=grid_thw.to(self.device),
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=tuple(vision))},
            num_return_sequences=num_return_sequences,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.processor.pad_token_id,
            return_dict_in_generate=True,
            use_cache=True,
            **settings,
        )
        completion = out.sequences[:, prompts.input_ids.shape[1]:]
        if completion.shape[1] == 0:  # zero new tokens: keep one pad so every row has a "last token"
            completion = completion.new_full((completion.shape[0], 1), self.processor.pad_token_id)
        attention = completion_mask(completion, self.eos_token_ids)
        cache = out.past_key_values if keep_cache else None
        deltas = self.reasoner.model.rope_deltas if keep_cache else None
        return Generation(completion, attention, cache, deltas)

    def query_states(
        self,
        prompts: EncodedPrompts,
        grid_thw: torch.Tensor,
        vision: list[torch.Tensor],
        generation: Generation,
    ) -> torch.Tensor:
        """States of the M context queries placed after prompt + completion (scheme per config)."""
        queries = self.context.context_queries
        attention = generation.completion_attention
        if self.config.preprocessing.mask_pad_in_query_pass:
            attention = attention * (generation.completion_ids != self.processor.pad_token_id)
        if self.config.reuses_kv_cache and generation.cache is not None:
            return cached_query_pass(
                self.reasoner, prompts, generation.completion_ids, attention,
                generation.cache, generation.rope_deltas, queries,
            )
        return full_query_pass(
            self.reasoner, prompts, grid_thw.to(self.device), torch.cat(vision), generation.completion_ids,
            attention, queries, self.processor.pad_token_id, self.config.query_positions,
        ).query_states

    def segment(self, query_states: torch.Tensor, features: sam_head.SamImageFeatures, repeat_image: bool):
        """Query states -> SAM 2 prompts -> low-resolution mask logits (N, h, w) and predicted IoU (N,)."""
        prompts = self.context(query_states.to(self.dtype))
        return sam_head.decode_masks(self.sam, features, prompts, repeat_image=repeat_image)

    # ------------------------------------------------------------------ training
    def encode_completions(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded token ids of completion texts, each ending in the end-of-turn token, and their mask."""
        tokenizer = self.processor.tokenizer
        end = self.processor.end_of_turn_id
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [end] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.processor.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

    def sequence_forward(
        self,
        prompts: EncodedPrompts,
        grid_thw: torch.Tensor,
        vision: list[torch.Tensor],
        completion_ids: torch.Tensor,
        completion_attention: torch.Tensor,
        with_logprobs: bool,
        reasoner: nn.Module | None = None,
        with_query_states: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Forward of prompt + completion + queries: completion log-probs (B, T) and query states (B, M, C).

        Log-probs always use M-RoPE positions, the positions generation samples under, so SFT trains
        and GRPO scores the very distribution that generates. The query states use the configured
        scheme: with ``"mrope"`` one forward gives both; with the released ``"sequential"`` scheme a
        second, query-only pass is needed. ``reasoner`` (default: the model's own) lets a frozen
        reference policy be scored through the same path.
        """
        reasoner = reasoner if reasoner is not None else self.reasoner
        pass_args = (reasoner, prompts, grid_thw.to(self.device), torch.cat(vision), completion_ids,
                     completion_attention, self.context.context_queries, self.processor.pad_token_id)
        logprobs = states = None
        if with_logprobs:
            out = full_query_pass(*pass_args, "mrope", return_sequence_hidden=True)
            prompt_len = prompts.input_ids.shape[1]
            # The state before each completion token predicts it.
            hidden = out.sequence_hidden[:, prompt_len - 1 : prompt_len - 1 + completion_ids.shape[1]]
            logits = reasoner.lm_head(hidden).float()
            logprobs = torch.gather(logits, -1, completion_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
            if self.config.query_positions == "mrope":
                states = out.query_states
        if with_query_states and states is None:
            states = full_query_pass(*pass_args, self.config.query_positions).query_states
        return logprobs, states

    def segment_groups(
        self, query_states: torch.Tensor, features: sam_head.SamImageFeatures, group_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for consecutive groups of ``group_size`` rows that share one image each."""
        logits, ious = [], []
        for image_index, start in enumerate(range(0, query_states.shape[0], group_size)):
            feats = features.select([image_index])
            lo, iou = self.segment(query_states[start : start + group_size], feats, repeat_image=True)
            logits.append(lo)
            ious.append(iou)
        return torch.cat(logits), torch.cat(ious)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def predict_many(
        self,
        image: object,
        queries: list[str],
        *,
        template: str | None = None,
        max_new_tokens: int | None = None,
    ) -> list[SegmentationResult]:
        """Segment several queries on one image, sharing the vision encoding and the SAM 2 embedding.

        Stage timings in each result are those of the whole batch.
        """
        image = validate_image(image)
        if not queries:
            return []
        collapse = self.config.preprocessing.collapse_whitespace
        queries = [clean_query(q, self.config.max_query_chars, collapse) for q in queries]
        timer, device = StageTimer(), self.device
        height, width = image.shape[:2]
        with timer.stage("preprocess", device):
            encoded = self.encode_image(image)
            prompts = self.encode_prompts(queries, [encoded] * len(queries), template)
            grid = encoded.grid_thw.repeat(len(queries), 1)
        with timer.stage("vision_encoder", device):
            vision = [self.vision_embeds(encoded)] * len(queries)
        with timer.stage("sam_image_encoder", device):
            features = self.sam_features([image])
        with timer.stage("generate", device):
            generation = self.generate(prompts, grid, vision, keep_cache=self.config.reuses_kv_cache, max_new_tokens=max_new_tokens)
        with timer.stage("query_pass", device):
            states = self.query_states(prompts, grid, vision, generation)
        with timer.stage("mask_decoder", device):
            logits, iou = self.segment(states, features, repeat_image=True)
        with timer.stage("postprocess", device):
            masks = (sam_head.upsample_logits(logits, height, width) > self.config.mask_threshold).cpu().numpy()
            results = [
                self._result(q, masks[i], float(iou[i]), generation, i, encoded.resized_size, (width, height))
                for i, q in enumerate(queries)
            ]
        total = sum(timer.ms.values())
        for result in results:
            result.timings_ms = {**timer.ms, "total": total}
        return results

    def predict(self, image: object, query: str, *, template: str | None = None, max_new_tokens: int | None = None) -> SegmentationResult:
        """Segment what ``query`` refers to in ``image`` (RGB uint8 HxWx3)."""
        return self.predict_many(image, [query], template=template, max_new_tokens=max_new_tokens)[0]

    def _result(self, query: str, mask: np.ndarray, iou: float, generation: Generation, row: int,
                resized: tuple[int, int], original: tuple[int, int]) -> SegmentationResult:
        ids = generation.completion_ids[row][generation.completion_attention[row].bool()].tolist()
        answer = self.processor.decode([t for t in ids if t not in self.eos_token_ids]).strip()
        parsed = parse_answer(answer)
        box = map_box(parsed.box, resized, original) if parsed.box is not None else None
        status = parsed.status if parsed.box is None else ("ok" if box is not None else "box outside the image")
        return SegmentationResult(
            query=query, mask=mask, box=box, box_status=status, label=parsed.label,
            score=min(max(iou, 0.0), 1.0), reasoning=parsed.reasoning, answer=answer,
            random_weights=self.config.random_weights, generated_tokens=len(ids),
        )

    def describe(self) -> dict[str, object]:
        return {
            "name": self.config.name or self.config.reasoner,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "random_weights": self.config.random_weights,
            "query_positions": self.config.query_positions,
            "prompt_collapse": self.config.prompt_collapse,
            "profile": self.config.profile or "native",
        }

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu", dtype: str = "auto", **overrides) -> "LensModel":
        from lens_model.hub import load_model

        return load_model(name_or_path, device=device, dtype=dtype, **overrides)

    def save_pretrained(self, directory: str, max_shard_size: str = "5GB") -> None:
        from lens_model.hub import save_model

        save_model(self, directory, max_shard_size=max_shard_size)
