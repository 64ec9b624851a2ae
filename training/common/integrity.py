"""Telling an intact checkpoint directory from a damaged one, without loading it into a model.

Each checkpoint holds ``manifest.json``: the relative path and size of every file written into it
(by every rank), recorded when the save completes. A checkpoint is intact when every file the
manifest lists is there with its size, every ``.json`` file parses, every ``.safetensors`` header
is consistent with the file, and every ``.pt`` file (``torch.save`` writes zip archives: optimizer
and RNG states, DeepSpeed's shards) passes the zip CRC-32 check, which ``torch.load`` skips.

That catches missing, empty, truncated and overwritten files and flipped bits in torch files;
safetensors has no checksum, so a flipped bit inside a tensor there goes unnoticed. Checkpoints
written before manifests existed are checked file by file in the same way.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path, PurePosixPath

from safetensors import SafetensorError, safe_open

MANIFEST_NAME = "manifest.json"


def write_manifest(directory: Path) -> None:
    """Record the size of every file under ``directory`` in its manifest (fsynced)."""
    sizes = {
        path.relative_to(directory).as_posix(): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    with open(directory / MANIFEST_NAME, "w", encoding="utf-8") as handle:
        json.dump({"files": sizes}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def damage(directory: Path, required: str) -> str | None:
    """What is wrong with the checkpoint in ``directory`` (naming the file), or None if it is intact.
    ``required`` is a file every checkpoint has, checked when there is no manifest."""
    if not directory.is_dir():
        return "the directory does not exist"
    manifest = directory / MANIFEST_NAME
    if manifest.is_file():
        problem = _missing_or_resized(directory, manifest)
        if problem:
            return problem
    elif not (directory / required).is_file():
        return f"{required} is missing"
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        problem = _file_damage(path)
        if problem:
            return f"{path.relative_to(directory).as_posix()} {problem}"
    return None


def _missing_or_resized(directory: Path, manifest: Path) -> str | None:
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        listed = [(str(name), int(size)) for name, size in files.items()]
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_NAME} is not a readable manifest"
    for name, size in listed:
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            return f"{MANIFEST_NAME} names a file outside the checkpoint"
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def _file_damage(path: Path) -> str | None:
    """Why one file is unreadable, for the kinds of file a checkpoint holds; None if it reads."""
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as error:
            return f"is not valid JSON ({_first_line(error)})"
    elif path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except (OSError, SafetensorError) as error:
            return f"is not a readable safetensors file ({_first_line(error)})"
    elif path.suffix == ".pt":
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
            return f"is not a readable torch file ({_first_line(error)})"
        if bad is not None:
            return f"fails its CRC check (in {bad})"
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:160]}" if text else type(error).__name__
