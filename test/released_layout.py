"""Write a LensModel in exactly the layout of the authors' released checkpoints (transformers 4.51)."""
from __future__ import annotations

import json
from pathlib import Path

from lens_model.modeling import LensModel
from lens_model.weights import save_state_dict

# Our names -> the authors' names (inverse of lens_model.released.KEY_MAP, old transformers layout).
EXPORT_MAP = (
    ("context.context_queries", "learnable_query"),
    ("context.connector.", "connector."),
    ("context.query_collapse.", "conv_1d."),
    ("context.proj_to_sam.", "proj_to_sam."),
    ("sam.", "sam."),
    ("reasoner.model.language_model.", "model."),
    ("reasoner.model.visual.", "visual."),
    ("reasoner.lm_head.", "lm_head."),
)


def released_key(key: str) -> str:
    for ours, theirs in EXPORT_MAP:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(key)


def released_config(model: LensModel) -> dict:
    text = model.reasoner.config.text_config
    vision = model.reasoner.config.vision_config
    return {
        "architectures": ["SAMR1ForConditionalGeneration_qwen2p5"],
        "model_type": "qwen2_vl",
        "num_of_query": model.config.num_queries,
        "if_use_qwen_connector": True,
        "if_include_sam": False,
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "hidden_act": text.hidden_act,
        "max_position_embeddings": text.max_position_embeddings,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": text.rope_parameters["rope_theta"],
        "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": text.rope_parameters["mrope_section"]},
        "tie_word_embeddings": True,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
        "image_token_id": model.reasoner.config.image_token_id,
        "video_token_id": model.reasoner.config.video_token_id,
        "vision_start_token_id": model.reasoner.config.vision_start_token_id,
        "vision_end_token_id": model.reasoner.config.vision_end_token_id,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.3",
        "vision_config": {
            "model_type": "qwen2_vl",
            "depth": vision.depth,
            "hidden_size": vision.hidden_size,
            "hidden_act": vision.hidden_act,
            "intermediate_size": vision.intermediate_size,
            "num_heads": vision.num_heads,
            "in_chans": 3,
            "patch_size": vision.patch_size,
            "spatial_merge_size": vision.spatial_merge_size,
            "temporal_patch_size": vision.temporal_patch_size,
            "tokens_per_second": vision.tokens_per_second,
            "window_size": vision.window_size,
            "out_hidden_size": vision.out_hidden_size,
            "fullatt_block_indexes": list(vision.fullatt_block_indexes),
            "embed_dim": vision.hidden_size,  # Qwen2-VL leftovers the authors' config carries
            "mlp_ratio": 4,
        },
    }


def released_generation_config(model: LensModel, repetition_penalty: float = 1.05) -> dict:
    """What the authors' save_pretrained writes: Qwen2.5-VL-3B-Instruct's generation config (with this
    tokenizer's ids), inherited unchanged."""
    tokens = model.processor.tokenizer.convert_tokens_to_ids
    return {
        "bos_token_id": tokens("<|endoftext|>"), "pad_token_id": tokens("<|endoftext|>"), "do_sample": True,
        "eos_token_id": [tokens("<|im_end|>"), tokens("<|endoftext|>")], "repetition_penalty": repetition_penalty,
        "temperature": 0.1, "top_p": 0.001, "top_k": 1, "transformers_version": "4.51.3",
    }


def write_released_checkpoint(model: LensModel, directory: Path, include_lm_head: bool = True,
                              generation: dict | None = None) -> None:
    """``generation``: the generation_config.json to write (None: none, as the older tests expect)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "reasoner.lm_head.weight" and not include_lm_head:
            continue
        state[released_key(key)] = tensor.clone()  # clone: the tied head must not share storage on disk
    save_state_dict(state, directory)
    (directory / "config.json").write_text(json.dumps(released_config(model), indent=2))
    model.processor.tokenizer.save_pretrained(directory)
    model.processor.image_processor.save_pretrained(directory)
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": model.processor.chat_template}))
    if generation is not None:
        (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
