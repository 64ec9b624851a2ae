"""Resolve a model name (built-in, local folder, hub id), build the LensModel and load its weights."""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from torch.overrides import TorchFunctionMode
from transformers import (AutoConfig, PretrainedConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen2VLConfig, Qwen2VLForConditionalGeneration)

from lens_model import sam_head, tiny
from lens_model.builtin import BUILTIN_DIR, BUILTIN_NAMES, TINY_RANDOM
from lens_model.config import LensConfig
from lens_model.errors import CheckpointFormatError, LensError, ModelNotFoundError, one_line
from lens_model.modeling import LensModel
from lens_model.processor import ReasonerProcessor
from lens_model.weights import KeyRename, load_into, match_checkpoint, save_state_dict

HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
DEVICE_TYPES = ("cpu", "cuda", "mps")
UNSAFE_CONFIG_KEYS = frozenset({"attn_implementation", "experts_implementation", "auto_map"})
REASONER_CLASSES = {
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration),
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration),
}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise LensError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(sorted(names))}")
    return names[dtype]


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked against this machine; anything else is a LensError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise LensError(f"device {device!r} is not one of {', '.join(DEVICE_TYPES)} or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LensError(f"device {device!r} requested but CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LensError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise LensError(f"device {device!r} requested but MPS is not available on this machine; use --device cpu")
    return dev


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
    from lens_model import released

    if directory is not None and released.is_released_checkpoint(directory):
        model = released.load_released(directory, profile=profile, **overrides)
    elif profile is not None:
        raise LensError(f"profile= chooses the settings of the authors' released checkpoints; {name_or_path} is not "
                        "one (its config.json carries its own settings)")
    elif directory is None:
        model = build_tiny_random(**overrides)
    else:
        model = load_native(directory, **overrides)
    return model.to(device=dev, dtype=torch_dtype).eval()


def locate(name_or_path: str) -> Path:
    """A local folder for ``name_or_path``: a built-in asset, an existing folder, or a hub download."""
    if name_or_path in BUILTIN_NAMES:
        path = BUILTIN_DIR / name_or_path
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"built-in model {name_or_path!r} is not shipped in this install ({path} is missing)")
        return path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json; it is not a model checkpoint")
        return path
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise ModelNotFoundError(
            f"model {name_or_path!r} not found: not a built-in name ({', '.join(BUILTIN_NAMES)}), "
            "not a checkpoint folder, and not a hub id of the form owner/name"
        )
    return _download(name_or_path)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import validate_repo_id
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        validate_repo_id(repo_id)
        print(f"Fetching {repo_id} (weights are cached after the first download)...", file=sys.stderr)
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILE_PATTERNS))
    except LocalEntryNotFoundError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable"
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local cache and {why}. On a machine with network run "
            f"`huggingface-cli download {repo_id} --local-dir DIR`, copy DIR here and pass it as the model path"
        ) from exc
    except HFValidationError as exc:
        raise ModelNotFoundError(f"model {repo_id!r} is not a valid hub id: {str(exc).splitlines()[0]}") from None
    except (RepositoryNotFoundError, HfHubHTTPError) as exc:
        raise ModelNotFoundError(f"model {repo_id!r} could not be downloaded from the hub: {exc}") from exc


def build_tiny_random(seed: int = 0, **overrides) -> LensModel:
    """The ``tiny-random`` model: tiny Qwen2.5-VL + tiny SAM 2, random weights, deterministic for ``seed``."""
    config = tiny.tiny_lens_config(**overrides)
    torch.manual_seed(seed)
    tokenizer = tiny.build_tokenizer()
    processor = tiny.build_processor(tokenizer, config.min_pixels, config.max_pixels)
    reasoner = Qwen2_5_VLForConditionalGeneration(tiny.reasoner_config(tokenizer))
    config.reasoner_config = reasoner.config.to_dict()
    config.sam2_model_config = sam_head.resolve_sam2_config(config.sam2_config, config.sam2_overrides)
    return LensModel(config, reasoner, processor, sam_head.build_sam2(config.sam2_model_config))


def build_model(config: LensConfig, **overrides) -> LensModel:
    """A new LensModel from a pretrained reasoner (hub id or folder) and a SAM 2 config/checkpoint.

    This is where training starts: the context module is freshly initialised.
    """
    config = dataclasses.replace(config, **overrides)
    directory = locate(config.reasoner)
    reasoner_cfg = AutoConfig.from_pretrained(directory, local_files_only=True)
    _, model_cls = _reasoner_classes(reasoner_cfg.model_type)
    # The attention implementation is ours to choose, not the downloaded folder's (see _refuse_unsafe_keys).
    reasoner = model_cls.from_pretrained(directory, local_files_only=True, torch_dtype=torch.float32,
                                         attn_implementation="sdpa")
    processor = ReasonerProcessor.load(directory, config.min_pixels, config.max_pixels)
    config.reasoner_config = reasoner.config.to_dict()
    config.sam2_model_config = sam_head.resolve_sam2_config(config.sam2_config, config.sam2_overrides)
    sam = sam_head.build_sam2(config.sam2_model_config)
    if config.sam2_checkpoint:
        sam_head.load_sam2_checkpoint(sam, config.sam2_checkpoint)
    return LensModel(config, reasoner, processor, sam)


def load_native(directory: Path, **overrides) -> LensModel:
    """Load a checkpoint written by :func:`save_model` (or by the training stages)."""
    config = LensConfig.load(directory)
    config = dataclasses.replace(config, **overrides) if overrides else config
    if config.reasoner_config is None or config.sam2_model_config is None:
        raise CheckpointFormatError(f"{directory}/config.json lacks the embedded reasoner or SAM 2 config")
    processor = ReasonerProcessor.load(directory, config.min_pixels, config.max_pixels)
    return assemble_from(config, processor, directory, optional=_is_tied_head)


def assemble_from(config: LensConfig, processor: ReasonerProcessor, directory: Path,
                  rename: KeyRename = lambda key: key, optional: Callable[[LensModel, str], bool] = lambda m, k: False,
                  ) -> LensModel:
    """The LensModel ``config`` describes, with the weights in ``directory``.

    The model is first built on the meta device (no memory) and checked against the weight files'
    headers, so a config that describes a bigger or different model than its files hold is refused
    before anything is allocated: loading never takes more memory than the weights themselves.
    """
    with meta_device():
        skeleton = assemble(config, processor)
    shapes = {name: tensor.shape for name, tensor in skeleton.state_dict().items()}
    match_checkpoint(shapes, directory, rename, lambda key: optional(skeleton, key))
    model = assemble(config, processor)
    load_into(model, directory, rename, lambda key: optional(model, key))
    return model


def assemble(config: LensConfig, processor: ReasonerProcessor) -> LensModel:
    """An (untrained) LensModel with the architecture described by ``config``'s embedded configs."""
    reasoner_cfg = reasoner_config_from_dict(config.reasoner_config)
    _, model_cls = _reasoner_classes(reasoner_cfg.model_type)
    sam = sam_head.build_sam2(config.sam2_model_config)
    try:
        return LensModel(config, model_cls(reasoner_cfg), processor, sam)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, AssertionError, ZeroDivisionError) as exc:
        raise CheckpointFormatError(f"config.json describes no buildable LENS model: {one_line(exc)}") from None


def reasoner_config_from_dict(raw: dict) -> PretrainedConfig:
    """The reasoner's transformers config from the (untrusted) dict embedded in ``config.json``."""
    model_type = raw.get("model_type", "qwen2_5_vl")
    cfg_cls, _ = _reasoner_classes(model_type)
    _refuse_unsafe_keys(raw, "reasoner_config")
    try:
        return cfg_cls(**{k: v for k, v in raw.items() if k != "model_type"})
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, StrictDataclassError) as exc:
        raise CheckpointFormatError(f"config.json reasoner_config is not a valid {model_type} config: "
                                    f"{one_line(exc)}") from None


def _refuse_unsafe_keys(node: object, where: str) -> None:
    """Refuse config keys with which a file would choose code: transformers fetches and runs a hub
    kernel named as the attention or experts implementation, and ``auto_map`` names remote code."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in UNSAFE_CONFIG_KEYS:
                raise CheckpointFormatError(f"config.json {where}.{key} is not allowed: a model folder may not choose code")
            _refuse_unsafe_keys(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_unsafe_keys(value, f"{where}[{i}]")


@contextmanager
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


def save_model(model: LensModel, directory: str | Path, max_shard_size: str = "5GB") -> None:
    """Write config.json, the processor files and model.safetensors (sharded above ``max_shard_size``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.reasoner_config = model.reasoner.config.to_dict()
    state = {k: v for k, v in model.state_dict().items() if not _is_tied_head(model, k)}
    save_state_dict(state, directory, max_shard_size=max_shard_size)
    model.processor.save(directory)
    model.config.save(directory)


def _is_tied_head(model: LensModel, key: str) -> bool:
    """Whether ``key`` is the LM head that shares the embedding's weights (saved once, as the embedding)."""
    return key == "reasoner.lm_head.weight" and bool(getattr(model.reasoner.config, "tie_word_embeddings", False) or
                                                    getattr(model.reasoner.config.get_text_config(), "tie_word_embeddings", False))


def _reasoner_classes(model_type: object):
    if not isinstance(model_type, str) or model_type not in REASONER_CLASSES:
        raise CheckpointFormatError(f"unsupported reasoner type {model_type!r}; LENS supports {sorted(REASONER_CLASSES)}")
    return REASONER_CLASSES[model_type]
