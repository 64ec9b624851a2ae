"""Reading pickles that should hold only plain data (the refer toolkit's ``refs(*).p``).

The plain unpickler runs whatever callable a pickle names, so a downloaded file could execute code.
This one resolves no global at all except the two builtin containers that need one (set, frozenset);
lists, dicts, tuples, strings and numbers are pickle opcodes and need no global.

It is also built on Python's pure-Python unpickler, whose memory stays proportional to the file:
the C unpickler (``pickle.Unpickler``) sizes its memo table at twice the largest index the file
names and zero-fills it, so a 9-byte file naming index 2**32 - 1 makes it allocate and fill 64 GiB.
The pure-Python one keeps the memo in a dict; its only up-front allocation, the zero-filled buffer
of a ``bytearray`` (never plain data in these files), is refused.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, NoReturn

from training.data.lines import error_line

_ALLOWED_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
}


class NotPlainData(pickle.UnpicklingError, ValueError):
    """A pickle that is corrupt or holds more than plain data; its message is one line."""


def _refuse_bytearray(unpickler: pickle._Unpickler) -> NoReturn:
    raise pickle.UnpicklingError("refusing to load a bytearray: only plain data is allowed in this pickle")


class PlainDataUnpickler(pickle._Unpickler):
    dispatch = {**pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: _refuse_bytearray}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return set if name == "set" else frozenset
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is allowed in this pickle")


def load_plain_pickle(path: Path) -> Any:
    """Unpickle lists, dicts, strings and numbers; anything else, or a corrupt file, raises ``NotPlainData``.

    Python 2 byte strings (the refer pickles were written by Python 2) are decoded as UTF-8.
    """
    data = Path(path).read_bytes()
    try:
        return PlainDataUnpickler(io.BytesIO(data), encoding="utf-8", errors="replace").load()
    except Exception as error:  # the unpickler runs the file's opcodes: any failure means a bad file
        raise NotPlainData(f"{path}: {type(error).__name__}: {error_line(error)}") from None
