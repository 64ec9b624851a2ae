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


def checkpoint_shapes(directory: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, read from the files' headers only (no tensor data is loaded)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except (OSError, SafetensorError) as exc:
            raise CheckpointFormatError(f"cannot read {path}: {exc}") from exc
    return shapes


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


KeyRename = Callable[[str], "str | None"]
KeyTest = Callable[[str], bool]


def match_checkpoint(
    expected: dict[str, torch.Size | tuple[int, ...]],
    directory: str | Path,
    rename: KeyRename = lambda key: key,
    optional: KeyTest = lambda key: False,
) -> None:
    """Check from the files' headers alone that they hold exactly the ``expected`` names and shapes.

    Run against a model built on the meta device, this refuses a checkpoint whose config describes
    a bigger (or any other) architecture than its weight files hold, before anything is allocated.
    ``rename`` may return ``None`` to drop a key; missing keys for which ``optional`` is true (such as
    a tied LM head) are allowed.
    """
    seen: set[str] = set()
    unexpected: list[str] = []
    for key, shape in checkpoint_shapes(directory).items():
        name = rename(key)
        if name is None:
            continue
        if name not in expected:
            unexpected.append(key)
            continue
        if tuple(expected[name]) != shape:
            raise CheckpointFormatError(f"{key}: checkpoint shape {shape} != model shape {tuple(expected[name])}")
        seen.add(name)
    missing = [k for k in expected if k not in seen and not optional(k)]
    if missing or unexpected:
        raise CheckpointFormatError(
            f"checkpoint {directory} does not match the model: {len(missing)} missing "
            f"(e.g. {missing[:4]}), {len(unexpected)} unexpected (e.g. {unexpected[:4]})"
        )


def load_into(module: torch.nn.Module, directory: str | Path, rename: KeyRename = lambda key: key,
              optional: KeyTest = lambda key: False) -> None:
    """Load every shard into ``module`` (one shard in memory at a time), renaming keys on the way.

    The names and shapes are checked first (see :func:`match_checkpoint`), so a mismatch leaves
    ``module`` untouched.
    """
    expected = module.state_dict()
    match_checkpoint({name: tensor.shape for name, tensor in expected.items()}, directory, rename, optional)
    for key, tensor in iter_tensors(directory):
        name = rename(key)
        if name is not None:
            with torch.no_grad():
                expected[name].copy_(tensor.to(expected[name].dtype))
