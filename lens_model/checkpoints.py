"""Model folders: read one into a LensModel, write one. The one place that knows their layouts.

* native folders (``save_model``, every training stage's output): ``config.json`` (a LensConfig with
  the reasoner's and SAM 2's configs embedded), ``model.safetensors`` (sharded above 5 GB), the
  tokenizer, ``preprocessor_config.json`` and ``chat_template.jinja``;
* the authors' released checkpoints (``lens_model.released``);
* a pretrained Qwen-VL reasoner's own folder, where training starts (``new_model``);
* ``tiny-random``, built in memory (``lens_model.tiny``).

Every path builds through ``lens_model.modeling.build_lens``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from lens_model import released, sam_head, tiny
from lens_model.builtin import TINY_RANDOM
from lens_model.config import LensConfig
from lens_model.errors import CheckpointFormatError, LensError
from lens_model.hub import locate, resolve_device, resolve_dtype
from lens_model.modeling import LensModel, build_lens
from lens_model.processor import ReasonerProcessor
from lens_model.reasoner import qwen_key, reasoner_config_from_dict, ties_lm_head
from lens_model.weights import WeightSource, iter_tensors, save_state_dict

LM_HEAD = "reasoner.lm_head.weight"
REASONER = "reasoner."
SAM = "sam."


def load_model(name_or_path: str, device: str = "cpu", dtype: str | torch.dtype = "auto", **overrides) -> LensModel:
    """Load a LENS model by built-in name, local folder or Hugging Face hub id, ready for inference.

    ``overrides`` replace LensConfig fields (for example ``template="reasoning"``). ``profile`` (a
    released repo id) chooses the settings of an authors' checkpoint whose folder does not tell which
    one it is (``lens_model.released_profiles``).
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    profile = overrides.pop("profile", None)
    directory = None if name_or_path == TINY_RANDOM else locate(name_or_path)
    if directory is not None and released.is_released_checkpoint(directory):
        config, weights = released.read_released(directory, profile, **overrides)
    elif profile is not None:
        raise LensError(f"profile= chooses the settings of the authors' released checkpoints; {name_or_path} is not "
                        "one (its config.json carries its own settings)")
    elif directory is None:
        return tiny.build_tiny_random(**overrides).to(device=dev, dtype=torch_dtype).eval()
    else:
        config, weights = read_native(directory, **overrides)
    model = build_lens(config, ReasonerProcessor.load(directory, config.min_pixels, config.max_pixels), weights)
    return model.to(device=dev, dtype=torch_dtype).eval()


def read_native(directory: Path, **overrides) -> tuple[LensConfig, WeightSource]:
    """The config and weights of a folder written by :func:`save_model`."""
    config = LensConfig.load(directory)
    config = dataclasses.replace(config, **overrides) if overrides else config
    if config.reasoner_config is None or config.sam2_model_config is None:
        raise CheckpointFormatError(f"{directory}/config.json lacks the embedded reasoner or SAM 2 config")
    tied = ties_lm_head(config.reasoner_config)
    return config, WeightSource(directory, optional=lambda key: tied and key == LM_HEAD)


def read_sam_tensors(name_or_path: str) -> dict[str, torch.Tensor]:
    """The SAM 2 tensors of a model folder, native or released, under SAM 2's own names (``sam.``
    removed), read one shard at a time without building the model."""
    directory = locate(name_or_path)
    rename = released.rename_key if released.is_released_checkpoint(directory) else (lambda key: key)
    tensors = {}
    for key, tensor in iter_tensors(directory):
        name = rename(key)
        if name is not None and name.startswith(SAM):
            tensors[name[len(SAM):]] = tensor
    if not tensors:
        raise CheckpointFormatError(f"{directory} holds no SAM 2 tensors (sam.*)")
    return tensors


def new_model(config: LensConfig) -> LensModel:
    """A new LENS around a pretrained Qwen-VL reasoner (``config.reasoner``: hub id or folder) and SAM 2
    (``config.sam2_config`` with its overrides, and the weights of ``config.sam2_checkpoint`` if set),
    with a freshly initialised context module: where training starts."""
    directory = locate(config.reasoner)
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointFormatError(f"cannot read {directory}/config.json: {exc}") from None
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{directory}/config.json does not hold a JSON object")
    reasoner_config = reasoner_config_from_dict(raw, f"{directory}/config.json").to_dict()
    config = dataclasses.replace(config, reasoner_config=reasoner_config,
                                 sam2_model_config=sam_head.resolve_sam2_config(config.sam2_config, config.sam2_overrides))
    tied = ties_lm_head(reasoner_config)
    # The folder holds the reasoner only: SAM 2 and the context module start from their initialisation.
    weights = WeightSource(directory, rename=_reasoner_key,
                           optional=lambda key: not key.startswith(REASONER) or (tied and key == LM_HEAD))
    model = build_lens(config, ReasonerProcessor.load(directory, config.min_pixels, config.max_pixels), weights)
    if config.sam2_checkpoint:
        sam_head.load_sam2_checkpoint(model.sam, config.sam2_checkpoint)
    return model


def _reasoner_key(key: str) -> str | None:
    name = qwen_key(key)
    return None if name is None else REASONER + name


def save_model(model: LensModel, directory: str | Path, max_shard_size: str = "5GB") -> None:
    """Write config.json, the processor files and model.safetensors (sharded above ``max_shard_size``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.reasoner_config = model.reasoner.config.to_dict()
    tied = ties_lm_head(model.config.reasoner_config)
    state = {k: v for k, v in model.state_dict().items() if not (tied and k == LM_HEAD)}
    save_state_dict(state, directory, max_shard_size=max_shard_size)
    model.processor.save(directory)
    model.config.save(directory)
