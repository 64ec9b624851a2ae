"""Shared helpers for model tests: tiny models and a fixed test image."""
from __future__ import annotations

import numpy as np

from lens_model.modeling import LensModel
from lens_model.tiny import build_tiny_random


def tiny_model(**overrides) -> LensModel:
    return build_tiny_random(seed=0, **overrides).eval()


def scene(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 230, np.uint8)
    image[20:60, 10:50] = (220, 30, 30)
    image[30:80, 70:120] = (30, 30, 220)
    return np.clip(image.astype(int) + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)


def tiny_qwen2_vl_model(**overrides) -> LensModel:
    """A tiny LENS around a Qwen2-VL (not 2.5) reasoner: the other supported architecture."""
    from transformers import Qwen2VLConfig

    from lens_model import sam_head, tiny
    from lens_model.modeling import build_lens

    tokenizer = tiny.build_tokenizer()
    base = tiny.reasoner_config(tokenizer)
    text = base.text_config
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters=text.rope_parameters, bos_token_id=text.bos_token_id,
                         eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id, tie_word_embeddings=True),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=base.image_token_id, video_token_id=base.video_token_id,
        vision_start_token_id=base.vision_start_token_id, vision_end_token_id=base.vision_end_token_id,
        tie_word_embeddings=True,
    )
    lens_config = tiny.tiny_lens_config(**overrides)
    lens_config.reasoner_config = config.to_dict()
    lens_config.sam2_model_config = sam_head.resolve_sam2_config(lens_config.sam2_config, lens_config.sam2_overrides)
    processor = tiny.build_processor(tokenizer, lens_config.min_pixels, lens_config.max_pixels)
    return build_lens(lens_config, processor).eval()
