"""Where a model comes from and where it runs: built-in names, local folders, hub downloads, devices, dtypes."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from lens_model.builtin import BUILTIN_DIR, BUILTIN_NAMES
from lens_model.errors import LensError, ModelNotFoundError

HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
DEVICE_TYPES = ("cpu", "cuda", "mps")


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
