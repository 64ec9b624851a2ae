"""Reading and writing LENS weight files (safetensors only; sharded with an index above 5 GB)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from lens_model.errors import CheckpointFormatError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def save_state_dict(state: dict[str, torch.Tensor], directory: str | Path, max_shard_size: str = "5GB") -> None:
    # Copies: engines such as DeepSpeed keep parameters as views into one flat buffer, which safetensors refuses.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    save_torch_state_dict(tensors, directory, max_shard_size=max_shard_size)


def weight_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        files = [directory / s for s in shards]
    elif (directory / SINGLE_FILE).is_file():
        files = [directory / SINGLE_FILE]
    else:
        raise CheckpointFormatError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointFormatError(f"weight shards missing in {directory}: {missing}")
    return files


def checkpoint_keys(directory: str | Path) -> list[str]:
    keys: list[str] = []
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys.extend(handle.keys())
        except (OSError, SafetensorError) as exc:
            raise CheckpointFormatError(f"cannot read {path}: {exc}") from exc
    return keys


def iter_tensors(directory: str | Path, device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    files = weight_files(directory)
    # Sharded checkpoints are the multi-GB ones: show progress while they load.
    for path in tqdm(files, desc="loading weights", unit="shard", disable=len(files) < 2, file=sys.stderr):
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                for key in handle.keys():
                    yield key, handle.get_tensor(key)
        except (OSError, RuntimeError, ValueError, SafetensorError) as exc:  # truncated or corrupt shard
            raise CheckpointFormatError(f"cannot read {path}: {exc}") from exc


def load_into(
    module: torch.nn.Module,
    directory: str | Path,
    rename: Callable[[str], str | None] = lambda key: key,
    optional: Callable[[str], bool] = lambda key: False,
) -> None:
    """Load every shard into ``module`` (one shard in memory at a time), renaming keys on the way.

    ``rename`` may return ``None`` to drop a key. Missing keys for which ``optional`` is true (such
    as a tied LM head) are allowed; any other missing or unexpected key is an error.
    """
    expected = module.state_dict()
    seen: set[str] = set()
    unexpected: list[str] = []
    for key, tensor in iter_tensors(directory):
        name = rename(key)
        if name is None:
            continue
        if name not in expected:
            unexpected.append(key)
            continue
        target = expected[name]
        if target.shape != tensor.shape:
            raise CheckpointFormatError(f"{key}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(tensor.to(target.dtype))
        seen.add(name)
    missing = [k for k in expected if k not in seen and not optional(k)]
    if missing or unexpected:
        raise CheckpointFormatError(
            f"checkpoint {directory} does not match the model: {len(missing)} missing "
            f"(e.g. {missing[:4]}), {len(unexpected)} unexpected (e.g. {unexpected[:4]})"
        )
