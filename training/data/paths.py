"""Containment of the file names that annotations give: only regular files inside the dataset's root.

An annotation names a file relative to a root (the JSONL file's folder, a refer ``image_dir``, the
GroundingSuite image root, a ReasonSeg split folder). The name must be relative and free of ``..``,
and the file, with every symlink resolved, must be a regular file inside the resolved root: a
symlink may point elsewhere inside the dataset, not out of it, and devices, FIFOs and ``/proc``
files are never opened. The root itself may be a symlink (e.g. to a shared COCO copy).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from training.data.fields import brief
from training.data.skips import BrokenEntry

OUTSIDE = "path outside the dataset"


def _check_relative(name: object) -> str:
    """``name`` if it is a non-empty relative path without ``..``; ``BrokenEntry`` otherwise."""
    if not isinstance(name, str) or not name:
        raise BrokenEntry("missing field", f"expected a relative file path, got {brief(name)}")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise BrokenEntry(OUTSIDE, f"{brief(name)} is absolute or contains '..'")
    return name


def contained_file(root: Path, name: object, missing: str) -> Path:
    """``root / name`` for a regular file that stays inside ``root`` (already resolved, see
    ``Path.resolve``); a missing file raises ``BrokenEntry(missing)``."""
    path = root / _check_relative(name)
    try:
        resolved = path.resolve(strict=True)
        mode = resolved.stat().st_mode
    except (OSError, RuntimeError, ValueError) as error:  # absent, a symlink loop, a NUL in the name
        raise BrokenEntry(missing, _shown(path)) from error
    if not resolved.is_relative_to(root):
        raise BrokenEntry(OUTSIDE, f"{_shown(path)} resolves to {_shown(resolved)}")
    if not stat.S_ISREG(mode):
        raise BrokenEntry("not a regular file", _shown(path))
    return path


def first_contained_file(root: Path, names: Iterable[object], missing: str) -> Path:
    """The first of ``names`` that ``contained_file`` finds; a name refused for any other reason than
    being absent ends the search with that refusal."""
    first_missing: BrokenEntry | None = None
    for name in names:
        try:
            return contained_file(root, name, missing)
        except BrokenEntry as error:
            if error.reason != missing:
                raise
            first_missing = first_missing or error
    raise first_missing or BrokenEntry(missing)


def _shown(path: Path) -> str:
    return str(path)[:300]
