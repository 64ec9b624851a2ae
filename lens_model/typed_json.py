"""Config dataclasses whose every value is checked against its field's annotation and range.

A ``CheckedFields`` dataclass checks itself on construction, however it is built: from untrusted
JSON with ``from_json`` (which also refuses unknown keys), in code, or by ``dataclasses.replace``.
A field declares a range with ``bounded(default, low, high)``. Values of the wrong type (``true``
is not an integer, ``"3"`` is not a number) and numbers outside their range are refused with a
one-line ``CheckpointFormatError`` that names the field; nested dicts become their dataclasses.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from lens_model.errors import CheckpointFormatError

T = TypeVar("T")
RANGE = "range"


def bounded(default: float, low: float, high: float) -> Any:
    """A dataclass field with a default and an inclusive numeric range."""
    return dataclasses.field(default=default, metadata={RANGE: (low, high)})


@dataclasses.dataclass
class CheckedFields:
    def __post_init__(self) -> None:
        cls = type(self)
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(self, f.name)
            checked = check_value(value, hints[f.name], f"{cls.__name__}.{f.name}", f.metadata.get(RANGE))
            if checked is not value:
                object.__setattr__(self, f.name, checked)


def from_json(cls: type[T], data: Any, where: str) -> T:
    """``cls(**data)`` for a ``CheckedFields`` class, refusing keys it does not have."""
    if not isinstance(data, Mapping):
        raise CheckpointFormatError(f"{where} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(str(key) for key in set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise CheckpointFormatError(f"unknown fields in {where}: {unknown}")
    return cls(**data)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_value(value: Any, hint: Any, where: str, bounds: tuple[float, float] | None = None) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]  # only ``X | None`` is used
        return check_value(value, inner, where, bounds)
    if origin is Literal:
        if not any(type(value) is type(choice) and value == choice for choice in args):
            raise refuse(where, f"must be one of {list(args)}", value)
        return value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_json(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise refuse(where, "must be true or false", value)
        return value
    if hint in (int, float):
        return _number(value, hint, where, bounds)
    if hint is str:
        if not isinstance(value, str):
            raise refuse(where, "must be a string", value)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise refuse(where, "must be a list", value)
        return [check_value(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
            raise refuse(where, "must be a JSON object", value)
        return dict(value)
    raise TypeError(f"{where}: annotation {hint!r} is not supported by typed_json")  # a programming error


def _number(value: Any, kind: type, where: str, bounds: tuple[float, float] | None) -> int | float:
    accepted = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, accepted) or not math.isfinite(value):
        raise refuse(where, "must be an integer" if kind is int else "must be a finite number", value)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise refuse(where, f"must lie in [{bounds[0]:g}, {bounds[1]:g}]", value)
    return value  # unchanged: a JSON integer in a float field stays the integer the writer saved


def refuse(where: str, what: str, value: Any) -> CheckpointFormatError:
    shown = repr(value)
    return CheckpointFormatError(f"{where} {what}, got {shown if len(shown) <= 60 else shown[:57] + '...'}")
