"""Reading and writing LENS weight files (safetensors only; sharded with an index above 5 GB).

A model folder is untrusted. Every shard its index names must be a relative path inside the folder
(no ``..``, not absolute) and a regular file; symlinks are followed, because the Hugging Face cache
stores each file of a snapshot as a symlink into its ``blobs`` folder. An index that is not valid
JSON, larger than ``MAX_INDEX_BYTES``, or not a ``weight_map`` of strings is a ``CheckpointFormatError``.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from lens_model.errors import CheckpointFormatError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# A 70B model's index is about 100 kB; anything this large is not an index.
MAX_INDEX_BYTES = 16 * 2**20


def save_state_dict(state: dict[str, torch.Tensor], directory: str | Path, max_shard_size: str = "5GB") -> None:
    # Copies: engines such as DeepSpeed keep parameters as views into one flat buffer, which safetensors refuses.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    save_torch_state_dict(tensors, directory, max_shard_size=max_shard_size)


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # follows symlinks: /dev/zero or a FIFO is refused
    except (OSError, ValueError):  # absent, a symlink loop, a NUL in the name
        return False


def _shard_names(index: Path) -> list[str]:
    """The distinct shard file names an index's ``weight_map`` names, each checked to stay in its folder."""
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise CheckpointFormatError(f"{index} is over {MAX_INDEX_BYTES // 2**20} MiB, too large for an index")
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not JSON, or nested too deeply
        raise CheckpointFormatError(f"{index} is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointFormatError(f"{index} has no 'weight_map' of tensor names to file names")
    shards = sorted(set(weight_map.values()))
    outside = [s for s in shards if not s or PurePosixPath(s).is_absolute() or ".." in PurePosixPath(s).parts]
    if outside:
        raise CheckpointFormatError(f"{index} names files outside its folder: {_names(outside)}")
    return shards


def _names(names: list[str]) -> str:
    """A few of ``names``, each cut short: they come from an untrusted file."""
    return ", ".join(repr(name[:80]) for name in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def weight_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        files = [directory / shard for shard in _shard_names(index)]
    elif (directory / SINGLE_FILE).is_file():
        files = [directory / SINGLE_FILE]
    else:
        raise CheckpointFormatError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")
    missing = [f.name for f in files if not _is_regular_file(f)]
    if missing:
        raise CheckpointFormatError(f"weight shards missing (or not regular files) in {directory}: {_names(missing)}")
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


@dataclass(frozen=True)
class WeightSource:
    """A folder of weight files, how its tensor names map to the model's (``rename``; None drops a
    tensor), and which of the model's tensors it may lack (``optional``, e.g. a tied LM head)."""

    directory: Path
    rename: KeyRename = lambda key: key
    optional: KeyTest = lambda key: False


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
