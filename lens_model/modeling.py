"""LensModel: the reasoner (Qwen2.5-VL), the context module and SAM 2's mask head, as one nn.Module.

    model = build_lens(config, processor)                       # the one builder (random weights)
    model = build_lens(config, processor, WeightSource(folder))  # ... with a folder's weights, checked first
    out = model(inputs, completions, sam_features, rows_per_image=G, return_logprobs=True)
    out.logprobs, out.query_states, out.mask_logits, out.iou_predictions

``forward`` is the computation SFT, alignment, GRPO and the predictor run, so engines that act in
forward hooks (DeepSpeed ZeRO-3) see all of it. Images and queries to results: ``lens_model.predictor``;
model folders: ``lens_model.checkpoints``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from lens_model import sam_head
from lens_model.config import GenerationConfig, LensConfig
from lens_model.context import ContextModule
from lens_model.decoding import generate_kwargs
from lens_model.errors import CheckpointFormatError, one_line
from lens_model.processor import EncodedImage, EncodedPrompts, ReasonerProcessor
from lens_model.query_pass import cached_query_pass, completion_mask, full_query_pass
from lens_model.reasoner import build_reasoner
from lens_model.result import Box
from lens_model.weights import WeightSource, load_into, match_checkpoint


@dataclass
class ReasonerInputs:
    """What the reasoner reads for B rows: prompts (left-padded), image grids, vision features."""

    prompts: EncodedPrompts
    grid_thw: torch.Tensor  # (B, 3)
    vision: list[torch.Tensor]  # one (tokens, C) tensor per row; rows of one image share it

    def repeat_rows(self, times: int) -> ReasonerInputs:
        """Every row ``times`` times in a row (the G completions of one prompt)."""
        prompts = EncodedPrompts(*(t.repeat_interleave(times, dim=0) for t in (
            self.prompts.input_ids, self.prompts.attention_mask, self.prompts.mm_token_type_ids)))
        return ReasonerInputs(prompts, self.grid_thw.repeat_interleave(times, dim=0),
                              [features for features in self.vision for _ in range(times)])


@dataclass
class Completions:
    """Answers after the prompts: generated, or the ground truth in teacher forcing."""

    ids: torch.Tensor  # (B, T), padded after each row's end token
    attention: torch.Tensor  # (B, T), 1 up to and including the end token
    cache: object | None = None  # generate's KV cache, which the "mrope" query pass reuses
    rope_deltas: torch.Tensor | None = None


@dataclass
class LensOutput(ModelOutput):
    logprobs: torch.Tensor | None = None  # (B, T) log-probability of each completion token
    query_states: torch.Tensor | None = None  # (B, M, C) the context queries' last-layer states
    mask_logits: torch.Tensor | None = None  # (B, S/4, S/4) SAM 2's low-resolution mask logits
    iou_predictions: torch.Tensor | None = None  # (B,) SAM 2's predicted IoU


class LensModel(nn.Module):
    """LENS as one module, built from a ``LensConfig`` whose reasoner and SAM 2 configs are embedded.

    Build it with :func:`build_lens` (or ``lens_model.load_model``). ``sam_seed`` draws SAM 2's
    initial weights from their own random stream instead of the one the reasoner was drawn from.
    """

    def __init__(self, config: LensConfig, processor: ReasonerProcessor, sam_seed: int | None = None) -> None:
        super().__init__()
        if config.reasoner_config is None or config.sam2_model_config is None:
            raise CheckpointFormatError("the LENS config lacks its embedded reasoner or SAM 2 config")
        reasoner = build_reasoner(config.reasoner_config)
        with _own_stream(sam_seed):
            sam = sam_head.build_sam2(config.sam2_model_config)
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

    def forward(
        self,
        inputs: ReasonerInputs,
        completions: Completions,
        sam_features: sam_head.SamImageFeatures | None = None,
        *,
        rows_per_image: int = 1,
        return_logprobs: bool = False,
        return_query_states: bool = False,
        query_states: torch.Tensor | None = None,
        reasoner: nn.Module | None = None,
    ) -> LensOutput:
        """Prompt + completion + the M context queries through the reasoner, then SAM 2.

        * ``return_logprobs``: the completion tokens' log-probabilities, always under M-RoPE
          positions (those generation samples under), so SFT trains and GRPO scores the very
          distribution that generates.
        * The query states (when ``sam_features`` are given or ``return_query_states``) follow
          ``config.query_positions``: with ``"mrope"`` the log-prob pass gives them, or the pass
          reuses generate's KV cache when ``completions`` carry it; ``"sequential"`` (the released
          checkpoints) needs a pass of its own. ``query_states`` skips the query pass.
        * With ``sam_features``, the masks: every ``rows_per_image`` consecutive rows share one image
          of the features (1: one image per row).

        ``reasoner`` (default: the model's own) scores a frozen reference policy through the same path.
        """
        reasoner = reasoner if reasoner is not None else self.reasoner
        # One tensor for both passes below, so that their gradients into the vision tower add up in one order.
        vision = torch.cat(inputs.vision)
        logprobs = None
        if return_logprobs:
            out = self._full_pass(reasoner, inputs, vision, completions.ids, completions.attention, "mrope",
                                  logprobs=True)
            prompt_len = inputs.prompts.input_ids.shape[1]
            # The state before each completion token predicts it.
            hidden = out.sequence_hidden[:, prompt_len - 1 : prompt_len - 1 + completions.ids.shape[1]]
            logits = reasoner.lm_head(hidden).float()
            logprobs = torch.gather(logits, -1, completions.ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
            if query_states is None and self.config.query_positions == "mrope" and not self._masks_pads:
                query_states = out.query_states
        if query_states is None and (sam_features is not None or return_query_states):
            query_states = self._query_pass(reasoner, inputs, vision, completions)
        mask_logits = iou = None
        if sam_features is not None:
            mask_logits, iou = self._masks(query_states, sam_features, rows_per_image)
        return LensOutput(logprobs=logprobs, query_states=query_states, mask_logits=mask_logits, iou_predictions=iou)

    def externally_read_parameters(self) -> list[nn.Parameter]:
        """Parameters read directly, outside the forward of the module that owns them (ZeRO-3 must
        be told: ``deepspeed.zero.register_external_parameter``)."""
        decoder, prompt_encoder = self.sam.sam_mask_decoder, self.sam.sam_prompt_encoder
        params = [self.context.context_queries, self.sam.no_mem_embed, prompt_encoder.no_mask_embed.weight,
                  decoder.iou_token.weight, decoder.mask_tokens.weight]
        if getattr(decoder, "pred_obj_scores", False):
            params.append(decoder.obj_score_token.weight)
        return params

    # ------------------------------------------------------------------ the passes of forward
    @property
    def _masks_pads(self) -> bool:
        return self.config.preprocessing.mask_pad_in_query_pass

    def _full_pass(self, reasoner: nn.Module, inputs: ReasonerInputs, vision: torch.Tensor, ids: torch.Tensor,
                   attention: torch.Tensor, scheme: str, logprobs: bool = False):
        return full_query_pass(reasoner, inputs.prompts, inputs.grid_thw.to(self.device), vision, ids, attention,
                               self.context.context_queries, self.processor.pad_token_id, scheme,
                               return_sequence_hidden=logprobs)

    def _query_pass(self, reasoner: nn.Module, inputs: ReasonerInputs, vision: torch.Tensor,
                    completions: Completions) -> torch.Tensor:
        attention = completions.attention
        if self._masks_pads:  # the authors' mask is ``ids != pad``: a pad token inside an answer is not attended
            attention = attention * (completions.ids != self.processor.pad_token_id)
        if self.config.reuses_kv_cache and completions.cache is not None and reasoner is self.reasoner:
            return cached_query_pass(reasoner, inputs.prompts, completions.ids, attention, completions.cache,
                                     completions.rope_deltas, self.context.context_queries)
        return self._full_pass(reasoner, inputs, vision, completions.ids, attention, self.config.query_positions).query_states

    def _masks(self, states: torch.Tensor, features: sam_head.SamImageFeatures,
               rows_per_image: int) -> tuple[torch.Tensor, torch.Tensor]:
        if rows_per_image == 1:
            return sam_head.decode_masks(self.sam, features, self.context(states.to(self.dtype)), repeat_image=False)
        logits, ious = [], []
        for image, start in enumerate(range(0, states.shape[0], rows_per_image)):
            prompts = self.context(states[start : start + rows_per_image].to(self.dtype))
            group_logits, group_iou = sam_head.decode_masks(self.sam, features.select([image]), prompts, repeat_image=True)
            logits.append(group_logits)
            ious.append(group_iou)
        return torch.cat(logits), torch.cat(ious)

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

    def encode_image(self, image) -> EncodedImage:
        return self.processor.encode_image(image, self.config.preprocessing.reasoner_longest_side)

    def vision_embeds(self, encoded: EncodedImage, reasoner: nn.Module | None = None) -> torch.Tensor:
        """Vision-tower features for one image: (num_tokens, C). ``reasoner`` defaults to the model's own."""
        reasoner = reasoner if reasoner is not None else self.reasoner
        pixels = encoded.pixel_values.to(self.device, reasoner.model.visual.dtype)
        out = reasoner.model.get_image_features(pixels, encoded.grid_thw.to(self.device), return_dict=True)
        return out.pooler_output[0]

    def sam_pixels(self, images: list, dtype: torch.dtype | None = None) -> torch.Tensor:
        """RGB uint8 images as SAM 2's normalised (B, 3, S, S) input, on the model's device, in ``dtype``
        (default: the model's)."""
        resize = self.config.preprocessing.sam_resize
        pixels = torch.stack([sam_head.preprocess(img, self.config.sam_image_size, resize) for img in images])
        return pixels.to(self.device, dtype or self.dtype)

    def sam_features(self, images: list) -> sam_head.SamImageFeatures:
        return sam_head.encode_images(self.sam, self.sam_pixels(images))

    def box_masks(self, features: sam_head.SamImageFeatures, boxes: Sequence[Box], frame: tuple[int, int],
                  image_of_box: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM 2's own masks for ``boxes`` (x1, y1, x2, y2 in a ``frame`` of (width, height) pixels),
        box i on image ``image_of_box[i]`` of ``features``: the instance masks of an answer's objects
        after its first (``docs/model.md``). Low-resolution logits (N, S/4, S/4) and predicted IoU (N,)."""
        size = self.config.sam_image_size
        scale = torch.tensor([size / frame[0], size / frame[1]] * 2)
        prompts = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale).clamp(0, size).to(self.device)
        return sam_head.decode_box_masks(self.sam, features.select(list(image_of_box)), prompts)

    def encode_prompts(self, queries: list[str], encoded: list[EncodedImage], template: str | None = None) -> EncodedPrompts:
        template = template or self.config.template
        # A custom instruction belongs to the template the model was trained with.
        instruction = self.config.instruction if template == self.config.template else ""
        texts = [self.processor.render(q, template, self.config.system_prompt, instruction) for q in queries]
        prompts = self.processor.encode_prompts(texts, [e.num_tokens for e in encoded])
        return EncodedPrompts(*(t.to(self.device) for t in (prompts.input_ids, prompts.attention_mask, prompts.mm_token_type_ids)))

    def encode_inputs(self, queries: list[str], encoded: list[EncodedImage], vision: list[torch.Tensor],
                      template: str | None = None) -> ReasonerInputs:
        """Reasoner inputs for one query per row, each row with its image's encoding and vision features."""
        grid = torch.cat([e.grid_thw for e in encoded]).to(self.device)
        return ReasonerInputs(self.encode_prompts(queries, encoded, template), grid, vision)

    def encode_completions(self, texts: list[str]) -> Completions:
        """Teacher-forced completions: the texts' tokens, each ending in the end-of-turn token, right-padded."""
        tokenizer = self.processor.tokenizer
        end = self.processor.end_of_turn_id
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [end] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.processor.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return Completions(ids.to(self.device), mask.to(self.device))

    def generate(self, inputs: ReasonerInputs, num_return_sequences: int = 1, keep_cache: bool = False,
                 generation: GenerationConfig | None = None, **overrides) -> Completions:
        """Answers to ``inputs`` under ``generation`` (default: the model's own decoding settings), with
        ``overrides`` that are not None on top (``lens_model.decoding.generate_kwargs``). Answers end at
        the model's end tokens. ``keep_cache`` keeps the KV cache for the "mrope" query pass."""
        prompts = inputs.prompts
        settings = generate_kwargs(generation or self.config.generation, prompts.input_ids.shape[1],
                                   self.processor.placeholder_token_ids, **overrides)
        out = self.reasoner.generate(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            mm_token_type_ids=prompts.mm_token_type_ids,
            image_grid_thw=inputs.grid_thw.to(self.device),
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=tuple(inputs.vision))},
            num_return_sequences=num_return_sequences,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.processor.pad_token_id,
            return_dict_in_generate=True,
            use_cache=True,
            **settings,
        )
        ids = out.sequences[:, prompts.input_ids.shape[1]:]
        if ids.shape[1] == 0:  # zero new tokens: keep one pad so every row has a "last token"
            ids = ids.new_full((ids.shape[0], 1), self.processor.pad_token_id)
        return Completions(ids, completion_mask(ids, self.eos_token_ids),
                           cache=out.past_key_values if keep_cache else None,
                           rope_deltas=self.reasoner.model.rope_deltas if keep_cache else None)


def build_lens(config: LensConfig, processor: ReasonerProcessor, weights: WeightSource | None = None,
               *, sam_seed: int | None = None) -> LensModel:
    """The one way a LensModel is made: the tiny and demo models, native and released checkpoints,
    and the start of training all come through here.

    With ``weights``, the model is first built on the meta device (no memory) and matched, name by
    name and shape by shape, against the weight files' headers: a config describing a bigger or
    other model than its files hold is refused before anything is allocated. Then it is built for
    real and the weights are copied in.
    """
    if weights is not None:
        with meta_device():
            skeleton = _construct(config, processor, sam_seed)
        shapes = {name: tensor.shape for name, tensor in skeleton.state_dict().items()}
        match_checkpoint(shapes, weights.directory, weights.rename, weights.optional)
    model = _construct(config, processor, sam_seed)
    if weights is not None:
        load_into(model, weights.directory, weights.rename, weights.optional)
    return model


def _construct(config: LensConfig, processor: ReasonerProcessor, sam_seed: int | None) -> LensModel:
    try:
        return LensModel(config, processor, sam_seed)
    except CheckpointFormatError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, AssertionError, ZeroDivisionError) as exc:
        raise CheckpointFormatError(f"the LENS config describes no buildable model: {one_line(exc)}") from None


@contextlib.contextmanager
def _own_stream(seed: int | None) -> Iterator[None]:
    """Draw from ``seed``'s random stream, leaving the global one as it was (no-op for None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """Build modules on the meta device: shapes without memory."""
    with torch.device("meta"), _LinspaceOnCpu():
        yield


class _LinspaceOnCpu(TorchFunctionMode):
    """SAM 2's Hiera reads its drop-path schedule with ``.item()``, which a meta tensor cannot give:
    build that small tensor on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.linspace:
            kwargs.setdefault("device", "cpu")
        return func(*args, **kwargs)
