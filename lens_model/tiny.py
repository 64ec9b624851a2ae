"""Tiny randomly initialised LENS parts, built offline in seconds for tests, benchmarks and smoke runs.

The reasoner is a real Qwen2.5-VL architecture (2 layers, width 64) with a byte-level BPE tokenizer
trained on a small built-in corpus; SAM 2 is the real Hiera/SAM 2 code with a tiny trunk at 256 px.
Outputs are random but every code path (generation, query pass, SAM 2 decoding) is the real one.
"""
from __future__ import annotations

import json
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2_5_VLConfig, Qwen2TokenizerFast, Qwen2VLImageProcessorPil

from lens_model import sam_head
from lens_model.builtin import TINY_RANDOM
from lens_model.config import ConnectorConfig, GenerationConfig, LensConfig
from lens_model.modeling import LensModel, build_lens
from lens_model.processor import ReasonerProcessor

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# Qwen2-VL's chat template, reduced to what LENS uses (system/user/assistant turns, image parts).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_CORPUS = (
    "You are a helpful assistant. Output the bounding box of the red circle in the image.",
    'Find "the blue square left of the green triangle" in the image. Compare the candidate objects.',
    '<think>There are two circles; the red one is further left.</think><answer>[{"bbox_2d": [12, 34, 56, 78], "label": "red circle"}]</answer>',
    '```json\n[{"bbox_2d": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "label": "mug"}]\n```',
    "the mug nearest the sink, the tool to loosen this bolt, the person on the left, a yellow cup",
    "small large top bottom left right leftmost rightmost above below next to between purple orange",
)

# Hiera trunk and SAM 2 heads shrunk to run in milliseconds at 256 px (see deps.md for the constraints).
TINY_SAM2_OVERRIDES = (
    "++model.image_size=256",
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.dim_feedforward=256",
    "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
    "++model.memory_encoder.fuser.num_layers=1",
)


def build_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 400) -> Qwen2TokenizerFast:
    """Train a byte-level BPE on ``corpus`` and wrap it as a Qwen2 tokenizer with Qwen's special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2TokenizerFast(
        vocab=model["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.add_special_tokens({"pad_token": "<|endoftext|>"})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_processor(tokenizer: Qwen2TokenizerFast, min_pixels: int, max_pixels: int) -> ReasonerProcessor:
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    return ReasonerProcessor(tokenizer, image_processor, CHAT_TEMPLATE)


def reasoner_config(tokenizer: Qwen2TokenizerFast, hidden_size: int = 64, layers: int = 2, heads: int = 4) -> Qwen2_5_VLConfig:
    """A small Qwen2.5-VL config; ``mrope_section`` must sum to head_dim / 2."""
    head_dim = hidden_size // heads
    quarter = head_dim // 8
    mrope = [head_dim // 2 - 2 * (3 * quarter // 2), 3 * quarter // 2, 3 * quarter // 2]
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("eot", "<|endoftext|>"), ("im_end", "<|im_end|>"), ("image", "<|image_pad|>"),
        ("video", "<|video_pad|>"), ("vstart", "<|vision_start|>"), ("vend", "<|vision_end|>"))}
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=4096, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
            bos_token_id=ids["eot"], eos_token_id=ids["im_end"], pad_token_id=ids["eot"],
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=112, out_hidden_size=hidden_size, fullatt_block_indexes=[1],
        ),
        image_token_id=ids["image"], video_token_id=ids["video"],
        vision_start_token_id=ids["vstart"], vision_end_token_id=ids["vend"],
        tie_word_embeddings=True,
    )


def tiny_lens_config(**overrides) -> LensConfig:
    """LensConfig of the ``tiny-random`` model (released layout unless overridden)."""
    values = dict(
        reasoner=TINY_RANDOM,
        num_queries=64,
        connector=ConnectorConfig(depth=2, num_heads=4),
        sam2_config="configs/sam2/sam2_hiera_t.yaml",
        sam2_overrides=list(TINY_SAM2_OVERRIDES) + [
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
        ],
        sam_image_size=256,
        min_pixels=56 * 56,
        max_pixels=224 * 224,
        generation=GenerationConfig(max_new_tokens=64),
        random_weights=True,
        name=TINY_RANDOM,
    )
    values.update(overrides)
    return LensConfig(**values)


def build_tiny_random(seed: int = 0, **overrides) -> LensModel:
    """The ``tiny-random`` model: tiny Qwen2.5-VL + tiny SAM 2, random weights, deterministic for ``seed``."""
    config = tiny_lens_config(**overrides)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config.reasoner_config = reasoner_config(tokenizer).to_dict()
    config.sam2_model_config = sam_head.resolve_sam2_config(config.sam2_config, config.sam2_overrides)
    return build_lens(config, build_processor(tokenizer, config.min_pixels, config.max_pixels))
