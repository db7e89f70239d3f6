"""config.json values checked against the type of the config field they fill, before anything uses
them: ``"hidden_size": "128"`` is an error naming the key, not a TypeError deep in the model.
JSON types as they are (no conversion): an integer field takes an integer, a number field an
integer or a finite float, a list field a list of its element type.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from .errors import ConfigError


def is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def describe(tp: Any) -> str:
    """What a user should write for ``tp`` ("a number", "an integer", "true or false", ...)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if is_union(tp):
        return " or ".join(describe(a) for a in args) + (" (or null)" if type(None) in typing.get_args(tp) else "")
    origin = typing.get_origin(tp) or tp
    if origin is tuple and args:
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping {key: value}", list: "a list"}.get(origin, getattr(origin, "__name__", str(origin)))


def fits(value: Any, tp: Any) -> bool:
    """Whether the JSON value ``value`` is of type ``tp`` as it is."""
    if tp is Any:
        return True
    if is_union(tp):
        return any(fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if isinstance(value, bool) and origin is not bool:
        return False
    if origin is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    if origin is list:
        return isinstance(value, list) and (not args or all(fits(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and (not args or all(fits(v, args[1]) for v in value.values()))
    return isinstance(value, origin) if isinstance(origin, type) else True


def check_fields(d: dict, cls, section: str = "", names: dict[str, str] | None = None,
                 required: tuple[str, ...] = ()) -> None:
    """The values ``d`` holds for the fields of dataclass ``cls`` have the fields' types. ``names``:
    field -> the key ``d`` holds it under (only those fields are checked); default: every field under
    its own name. ``required``: keys that must be present (not null). Errors name ``section + key``."""
    if not isinstance(d, dict):
        raise ConfigError(f"must be an object {{key: value}}, got {type(d).__name__}", section.rstrip(".") or "config")
    hints = typing.get_type_hints(cls)
    names = names if names is not None else {f.name: f.name for f in dataclasses.fields(cls)}
    for key in required:
        if d.get(key) is None:
            raise ConfigError("is missing", section + key)
    for field, key in names.items():
        if key in d and not fits(d[key], hints[field]):
            raise ConfigError(f"must be {describe(hints[field])}, got {d[key]!r} ({type(d[key]).__name__})",
                              section + key)
