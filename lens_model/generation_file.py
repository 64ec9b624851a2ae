"""A model folder's ``generation_config.json``: the decoding settings the authors' greedy search used.

The authors decode with ``generate(do_sample=False, max_length=768)`` and nothing else, so Hugging
Face merges in the checkpoint's ``generation_config.json``. The released checkpoints inherit
Qwen2.5-VL-3B-Instruct's: repetition penalty 1.05 and end ids <|im_end|>, <|endoftext|>. The file is
untrusted data, so only plain numbers and token ids are taken from it, each type- and range-checked:

* used: ``repetition_penalty``, ``eos_token_id`` (one id or a list), ``no_repeat_ngram_size``;
* ignored, because greedy search as the authors call it does not use them: the sampling settings
  (``do_sample`` is overridden to false), ``bos_token_id`` and ``pad_token_id`` (prompts come from the
  chat template; the pad only fills rows after their end), the length fields (the checkpoint's
  profile sets the cap, as the authors' call did), output-format flags and ``transformers_version``;
* refused with one line, unless null or the neutral value: everything else. That covers beam
  search, forced or banned tokens, stop strings and every field that names code or a model to run
  (``custom_generate``, assistant models, watermarking, cache or compile settings).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lens_model.config import GenerationConfig
from lens_model.errors import CheckpointFormatError, one_line

FILE_NAME = "generation_config.json"
USED = ("repetition_penalty", "eos_token_id", "no_repeat_ngram_size")
IGNORED = frozenset({
    "do_sample", "temperature", "top_p", "top_k", "typical_p", "min_p", "epsilon_cutoff", "eta_cutoff", "top_h",
    "bos_token_id", "pad_token_id", "decoder_start_token_id", "max_length", "max_new_tokens", "use_cache",
    "return_dict_in_generate", "output_scores", "output_logits", "output_attentions", "output_hidden_states",
    "transformers_version", "_from_model_config",
})
# Values of refused fields that leave greedy search unchanged (files often spell out defaults).
NEUTRAL = {
    "num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 1, "length_penalty": 1.0, "early_stopping": False,
    "min_length": 0, "min_new_tokens": 0, "diversity_penalty": 0.0, "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0, "renormalize_logits": False, "remove_invalid_values": False,
    "guidance_scale": 1.0, "low_memory": False, "token_healing": False,
}


def read_generation_file(directory: Path) -> dict[str, Any]:
    """The ``GenerationConfig`` fields that ``directory/generation_config.json`` sets ({} without one)."""
    path = Path(directory) / FILE_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointFormatError(f"cannot read {path}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path} must hold a JSON object, got {type(data).__name__}")
    refused = sorted(str(key) for key, value in data.items()
                     if key not in USED and key not in IGNORED and value is not None and NEUTRAL.get(key, ...) != value)
    if refused:
        raise CheckpointFormatError(
            f"{path} sets {', '.join(refused)[:120]}, which LENS does not take from a model folder "
            "(it reproduces plain greedy search only); remove the field to load the model")
    fields = {key: data[key] for key in ("repetition_penalty", "no_repeat_ngram_size") if data.get(key) is not None}
    eos = data.get("eos_token_id")
    if eos is not None:
        fields["eos_token_ids"] = [eos] if isinstance(eos, int) and not isinstance(eos, bool) else eos
    try:
        GenerationConfig(**fields)  # types and ranges
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{path}: {exc}") from None
    return fields
