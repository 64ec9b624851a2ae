"""Reading JSON Lines files where a malformed line is skipped and counted, not fatal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.data.skips import SkipCounter


def read_json_objects(path: Path, skips: SkipCounter) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each line holding a JSON object; blank lines are ignored."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                skips.skip("malformed json line", f"{path.name}:{number}: {error}")
                continue
            if not isinstance(value, dict):
                skips.skip("malformed json line", f"{path.name}:{number}: not an object")
                continue
            yield number, value
