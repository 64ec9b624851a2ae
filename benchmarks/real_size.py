"""The released LENS architecture at full size with random weights, for benchmarks that need the real
width and depth: Qwen2.5-VL-3B (36 layers of width 2048, 16 query / 2 KV heads; the 32-block vision
tower) and SAM 2-L (Hiera-L at 1024 px), 64 context queries, the connector and the Conv1d collapse.

The numbers are Qwen2.5-VL-3B-Instruct's config.json; no weights are downloaded. The tokenizer is
the tiny model's (its ids fit the 151,936-token vocabulary), so text prompts tokenise into somewhat
more tokens than Qwen's own tokenizer would give; the image tokens, which dominate, are exact.
Parameters are created directly in the requested dtype: about 8.9 GB in bf16, 17.8 GB in fp32.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import Qwen2_5_VLConfig

from lens_model import sam_head, tiny
from lens_model.config import RELEASED_SAM2_OVERRIDES, ConnectorConfig, LensConfig
from lens_model.modeling import LensModel, build_lens
from lens_model.processor import ReasonerProcessor

QWEN25_VL_3B_TEXT = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6,
    tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
)
QWEN25_VL_3B_VISION = dict(
    depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
    out_hidden_size=2048, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
)


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_real_size(dtype: torch.dtype, **overrides) -> LensModel:
    """The released architecture (``overrides``: LensConfig fields, e.g. the clean conventions)."""
    tokenizer = tiny.build_tokenizer()
    ids = tiny.reasoner_config(tokenizer)  # the special-token ids of this tokenizer
    reasoner = Qwen2_5_VLConfig(
        text_config={**QWEN25_VL_3B_TEXT, "bos_token_id": ids.text_config.bos_token_id,
                     "eos_token_id": ids.text_config.eos_token_id, "pad_token_id": ids.text_config.pad_token_id},
        vision_config=QWEN25_VL_3B_VISION, image_token_id=ids.image_token_id, video_token_id=ids.video_token_id,
        vision_start_token_id=ids.vision_start_token_id, vision_end_token_id=ids.vision_end_token_id,
        tie_word_embeddings=True,
    )
    config = LensConfig(reasoner="Qwen2.5-VL-3B (random)", reasoner_config=reasoner.to_dict(), num_queries=64,
                        connector=ConnectorConfig(depth=4, num_heads=16), sam2_config="configs/sam2/sam2_hiera_l.yaml",
                        sam2_overrides=list(RELEASED_SAM2_OVERRIDES), random_weights=True, name="real-size-random",
                        **overrides)
    config.sam2_model_config = sam_head.resolve_sam2_config(config.sam2_config, config.sam2_overrides)
    processor: ReasonerProcessor = tiny.build_processor(tokenizer, config.min_pixels, config.max_pixels)
    torch.manual_seed(0)
    with default_dtype(dtype):
        model = build_lens(config, processor)
    return model.to(dtype).eval()  # .to() keeps SAM 2's Fourier matrix in fp32 (LensModel._apply)
