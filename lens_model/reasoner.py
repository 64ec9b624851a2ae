"""The reasoner's transformers classes, built from a config dict that a model folder may have written.

LENS supports Qwen2.5-VL and Qwen2-VL reasoners. Their configs arrive as untrusted JSON (embedded in
``config.json``, or a pretrained reasoner's own folder), so a key with which a file could choose
code is refused, and any other defect is one ``CheckpointFormatError`` line.
"""
from __future__ import annotations

from typing import Any

from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import (PretrainedConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)

from lens_model.errors import CheckpointFormatError, one_line

REASONER_CLASSES: dict[str, tuple[type[PretrainedConfig], type[nn.Module]]] = {
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration),
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration),
}
# transformers fetches and runs a hub kernel named as the attention or experts implementation, and
# ``auto_map`` names remote code: a file may set none of them.
UNSAFE_CONFIG_KEYS = frozenset({"attn_implementation", "experts_implementation", "auto_map"})
# A Qwen-VL checkpoint's tensor names (either transformers layout) -> our module's; the first match wins.
QWEN_KEY_MAP = (
    ("model.language_model.", "model.language_model."),
    ("model.visual.", "model.visual."),
    ("visual.", "model.visual."),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
)
BUILD_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, AssertionError, ZeroDivisionError,
                StrictDataclassError)


def reasoner_config_from_dict(raw: dict[str, Any], where: str = "reasoner_config") -> PretrainedConfig:
    """The transformers config an untrusted dict describes (``model_type`` picks the class)."""
    model_type = raw.get("model_type", "qwen2_5_vl")
    cfg_cls, _ = reasoner_classes(model_type)
    _refuse_unsafe_keys(raw, where)
    try:
        return cfg_cls(**{k: v for k, v in raw.items() if k != "model_type"})
    except BUILD_ERRORS as exc:
        raise CheckpointFormatError(f"{where} is not a valid {model_type} config: {one_line(exc)}") from None


def build_reasoner(raw: dict[str, Any]) -> nn.Module:
    """A randomly initialised reasoner with the architecture ``raw`` describes."""
    config = reasoner_config_from_dict(raw)
    _, model_cls = reasoner_classes(config.model_type)
    try:
        return model_cls(config)
    except BUILD_ERRORS as exc:
        raise CheckpointFormatError(f"reasoner_config describes no buildable reasoner: {one_line(exc)}") from None


def reasoner_classes(model_type: object) -> tuple[type[PretrainedConfig], type[nn.Module]]:
    if not isinstance(model_type, str) or model_type not in REASONER_CLASSES:
        raise CheckpointFormatError(f"unsupported reasoner type {model_type!r}; LENS supports {sorted(REASONER_CLASSES)}")
    return REASONER_CLASSES[model_type]


def ties_lm_head(raw: dict[str, Any]) -> bool:
    """Whether the LM head shares the input embedding's weights (then checkpoints store it once)."""
    text = raw.get("text_config")
    return bool(raw.get("tie_word_embeddings") or (isinstance(text, dict) and text.get("tie_word_embeddings")))


def qwen_key(key: str) -> str | None:
    """The name in our reasoner module of a Qwen-VL checkpoint tensor (None if it is not one)."""
    for old, new in QWEN_KEY_MAP:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def _refuse_unsafe_keys(node: object, where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in UNSAFE_CONFIG_KEYS:
                raise CheckpointFormatError(f"config.json {where}.{key} is not allowed: a model folder may not choose code")
            _refuse_unsafe_keys(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_unsafe_keys(value, f"{where}[{i}]")
