"""Reading JSON annotation files: JSON Lines, where a malformed line is skipped and counted, and
whole JSON files, which are either parsed or refused with a one-line error.

Python's parser raises ``RecursionError`` on nesting deeper than about 1,000 levels and
``ValueError`` on an integer of more than 4,300 digits; both count as malformed JSON here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.data.skips import SkipCounter

MALFORMED_JSON = (ValueError, RecursionError)  # ValueError includes JSONDecodeError and UnicodeDecodeError


def read_json_objects(path: Path, skips: SkipCounter) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each line holding a JSON object; blank lines are ignored."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except MALFORMED_JSON as error:
                skips.skip("malformed json line", f"{path.name}:{number}: {error_line(error)}")
                continue
            if not isinstance(value, dict):
                skips.skip("malformed json line", f"{path.name}:{number}: not an object")
                continue
            yield number, value


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; ``ValueError`` with one line saying why if the file is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except MALFORMED_JSON as error:
        raise ValueError(f"{path} is not valid JSON: {error_line(error)}") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``ValueError`` with one line saying why if the file does not hold one."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


def error_line(error: Exception) -> str:
    """The first line (at most 200 characters) of the message of an error met while parsing a file."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
