"""Single values of untrusted annotations: short descriptions for skip messages, and ids.

Annotation files come from JSON and from plain-data pickles, so a value may be of any of their
types, nested thousands of levels deep or an integer of millions of digits; ``str()`` on such a
value raises (RecursionError, or ValueError past Python's integer-to-text digit limit) or builds a
huge string. These helpers never do either.
"""

from __future__ import annotations

import reprlib
from typing import Any

from training.data.skips import BrokenEntry

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 60


def brief(value: Any, limit: int = 80) -> str:
    """At most ``limit`` characters describing ``value``, whatever its size, depth or type."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # reprlib converts whole integers to text first: refused past the digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def entry_id(value: Any, field: str) -> str:
    """An id (a string or a number) as text; anything else makes the entry ``BrokenEntry("bad id")``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # an integer past the digit limit
            pass
    raise BrokenEntry("bad id", f"'{field}' must be a string or a number, got {brief(value)}")
