"""Load the checkpoints the LENS authors released (``OuyBin/LENS``, ``OuyBin/LENS_ReasonSeg``, ...).

Their layout (transformers 4.51, class ``SAMR1ForConditionalGeneration_qwen2p5``):

* ``config.json``: a Qwen2-VL-style config (``model_type: qwen2_vl``) around a Qwen2.5-VL model,
  plus ``num_of_query``; the vision config carries the Qwen2.5 fields (``fullatt_block_indexes``).
* weights: ``model.*`` (language model), ``visual.*`` (vision tower), optional tied ``lm_head.weight``,
  and at top level ``learnable_query``, ``connector.*``, ``conv_1d.*``, ``proj_to_sam.*``, ``sam.*``
  (SAM 2.0 Hiera-L, memory modules removed).

Transformers >= 4.52 moved the Qwen modules (``model.language_model.*``, ``model.visual.*``); both
namings are accepted. The checkpoint's conventions are kept: one collapsed SAM prompt token and
sequential positions in the query pass; its ``generation_config.json`` (``lens_model.generation_file``)
and the preprocessing, prompt and length cap of the checkpoint it is (``lens_model.released_profiles``).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from transformers import Qwen2_5_VLConfig

from lens_model import sam_head
from lens_model.config import RELEASED_SAM2_OVERRIDES, ConnectorConfig, GenerationConfig, LensConfig
from lens_model.errors import CheckpointFormatError, one_line
from lens_model.generation_file import read_generation_file
from lens_model.reasoner import qwen_key
from lens_model.released_profiles import identify, released_profile
from lens_model.weights import WeightSource, checkpoint_shapes

RELEASED_ARCHITECTURE = "SAMR1ForConditionalGeneration_qwen2p5"
CONNECTOR_HEADS = 16  # hard-coded in the authors' connector
TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
    "use_sliding_window", "sliding_window", "max_window_layers", "attention_dropout",
    "bos_token_id", "eos_token_id", "pad_token_id",
)
VISION_FIELDS = (
    "depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "in_channels", "patch_size",
    "spatial_merge_size", "temporal_patch_size", "tokens_per_second", "window_size", "out_hidden_size",
    "fullatt_block_indexes",
)
TOKEN_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
# (old prefix, new prefix); the first match wins.
KEY_MAP = (
    ("learnable_query", "context.context_queries"),
    ("connector.", "context.connector."),
    ("conv_1d.", "context.query_collapse."),
    ("proj_to_sam.", "context.proj_to_sam."),
    ("sam.", "sam."),
)  # then the Qwen-VL tensors, under ``reasoner.`` (lens_model.reasoner.qwen_key)
MEMORY_PREFIXES = tuple(f"sam.{name}" for name in sam_head.MEMORY_MODULES)


def is_released_checkpoint(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(config, dict):
        return False
    architectures = config.get("architectures")
    return "num_of_query" in config or (isinstance(architectures, list) and RELEASED_ARCHITECTURE in architectures)


def rename_key(key: str) -> str | None:
    if key.startswith(MEMORY_PREFIXES):
        return None
    for old, new in KEY_MAP:
        if key == old or key.startswith(old):
            return new + key[len(old):]
    name = qwen_key(key)
    return key if name is None else "reasoner." + name


def reasoner_config(raw: dict) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config from the released Qwen2-VL-style config (its ``model_type`` is ignored)."""
    text = {k: raw[k] for k in TEXT_FIELDS if k in raw}
    rope = raw.get("rope_scaling") or {}
    if "mrope_section" not in rope:
        raise CheckpointFormatError("released config has no rope_scaling.mrope_section")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": raw.get("rope_theta", 1e6), "mrope_section": rope["mrope_section"]}
    text["tie_word_embeddings"] = raw.get("tie_word_embeddings", True)
    vision_raw = raw.get("vision_config", {})
    if "fullatt_block_indexes" not in vision_raw:
        raise CheckpointFormatError("released config's vision_config lacks Qwen2.5-VL fields (fullatt_block_indexes)")
    vision = {k: vision_raw[k] for k in VISION_FIELDS if k in vision_raw}
    if "in_chans" in vision_raw and "in_channels" not in vision:
        vision["in_channels"] = vision_raw["in_chans"]
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=text["tie_word_embeddings"],
        **{k: raw[k] for k in TOKEN_FIELDS if k in raw},
    )


def read_released(directory: Path, profile: str | None = None, **overrides) -> tuple[LensConfig, WeightSource]:
    """The config and weights of the released checkpoint in ``directory``; ``profile`` (a repo id such as
    "OuyBin/LENS_ReasonSeg_CoT") chooses its settings when the folder cannot tell, ``overrides``
    replace LensConfig fields."""
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    keys = checkpoint_shapes(directory)
    depth = len({m.group(1) for k in keys if (m := re.match(r"connector\.blocks\.(\d+)\.", k))})
    if depth == 0 or "learnable_query" not in keys:
        raise CheckpointFormatError(f"{directory} has a LENS config but no learnable_query/connector weights")
    try:
        qwen = reasoner_config(raw)
        num_queries = raw["num_of_query"]
    except (TypeError, ValueError, KeyError, AttributeError, StrictDataclassError) as exc:
        raise CheckpointFormatError(
            f"{directory}/config.json is not a usable released LENS config: {one_line(exc)}") from None
    name = profile or identify(directory, raw)
    settings = released_profile(name)
    generation = GenerationConfig(**settings.length_cap(), **read_generation_file(directory))
    if any(t >= qwen.text_config.vocab_size for t in generation.eos_token_ids or ()):
        raise CheckpointFormatError(f"{directory}/generation_config.json names end ids {generation.eos_token_ids} "
                                    f"outside the vocabulary of {qwen.text_config.vocab_size} tokens")
    config = LensConfig(
        reasoner=str(directory),
        reasoner_config=qwen.to_dict(),
        num_queries=num_queries,
        connector=ConnectorConfig(depth=depth, num_heads=CONNECTOR_HEADS),
        prompt_collapse="conv1d",
        query_positions="sequential",
        sam2_config="configs/sam2/sam2_hiera_l.yaml",
        sam2_overrides=list(RELEASED_SAM2_OVERRIDES),
        generation=generation,
        name=directory.name,
        **settings.settings(name),
    )
    config = dataclasses.replace(config, **overrides)
    config.sam2_model_config = sam_head.resolve_sam2_config(config.sam2_config, config.sam2_overrides)
    return config, WeightSource(directory, rename=rename_key, optional=lambda key: key == "reasoner.lm_head.weight")
