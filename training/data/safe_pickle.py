"""Reading pickles that should hold only plain data (the refer toolkit's ``refs(*).p``).

The plain unpickler runs whatever callable a pickle names, so a downloaded file could execute code.
This one resolves no global at all except the two builtin containers that need one (set, frozenset);
lists, dicts, tuples, strings and numbers are pickle opcodes and need no global.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

_ALLOWED_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
}


class PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return set if name == "set" else frozenset
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is allowed in this pickle")


def load_plain_pickle(path: Path) -> Any:
    """Unpickle lists, dicts, strings and numbers; anything else raises ``pickle.UnpicklingError``.

    Python 2 byte strings (the refer pickles were written by Python 2) are decoded as UTF-8.
    """
    with open(path, "rb") as handle:
        return PlainDataUnpickler(handle, encoding="utf-8", errors="replace").load()
