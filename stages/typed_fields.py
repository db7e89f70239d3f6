"""Typed recipe values: every key coerced to its field's type, or a ConfigError naming the key.

``key=value`` overrides and YAML files both go through YAML, which reads ``2e-4`` (an exponent
without a dot) as the *string* "2e-4" and ``1e3`` as a string too. ``coerce(value, type, key)``
turns such strings into the number the field wants and refuses what cannot be one, naming the
dotted key and the expected type before anything is loaded. ``check_keys`` refuses unknown keys
with the known ones listed (and the closest one suggested).
"""
from __future__ import annotations

import difflib
import math
import typing
from typing import Any

from molora.config_types import describe, is_union as _is_union
from molora.errors import ConfigError

__all__ = ["coerce", "check_keys", "closest_key", "describe"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _fail(value: Any, tp: Any, key: str) -> None:
    raise ConfigError(f"expected {describe(tp)}, got {value!r} ({type(value).__name__})", key)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (bool, int, float, str, dict[...], list[...], unions with None)."""
    if tp is Any:
        return value
    if _is_union(tp):
        arms = typing.get_args(tp)
        if value is None and type(None) in arms:
            return None
        for arm in arms:  # the first arm that takes the value as it is, then the first that converts it
            if arm is not type(None) and isinstance(value, typing.get_origin(arm) or arm) \
                    and not (arm in (int, float) and isinstance(value, bool)):
                return coerce(value, arm, key)
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return coerce(value, arm, key)
            except ConfigError:
                continue
        _fail(value, tp, key)
    origin = typing.get_origin(tp) or tp
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        _fail(value, tp, key)
    if origin is int:
        if isinstance(value, bool):
            _fail(value, tp, key)
        if isinstance(value, int):
            return value
        number = _number(value)
        if number is not None and number.is_integer():
            return int(number)
        _fail(value, tp, key)
    if origin is float:
        if isinstance(value, bool):
            _fail(value, tp, key)
        number = _number(value)
        if number is None:
            _fail(value, tp, key)
        if not math.isfinite(number):
            raise ConfigError(f"expected a finite number, got {value!r}", key)
        return number
    if origin is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a file called 2024, a name like 7
        _fail(value, tp, key)
    if origin is dict:
        if not isinstance(value, dict):
            _fail(value, tp, key)
        args = typing.get_args(tp)
        return {k: coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            _fail(value, tp, key)
        args = typing.get_args(tp)
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is tuple:  # a fixed number of items, e.g. betas: [0.9, 0.98]
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            _fail(value, tp, key)
        return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if isinstance(value, origin):
        return value
    _fail(value, tp, key)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


# names other trainers use for molora's keys (Hugging Face TrainingArguments and the like)
SYNONYMS = {"learning_rate": "lr", "batch_size": "micro_batch_size", "per_device_train_batch_size": "micro_batch_size",
            "train_batch_size": "micro_batch_size", "gradient_accumulation_steps": "grad_accum",
            "lr_scheduler_type": "schedule", "scheduler": "schedule", "warmup": "warmup_steps",
            "eval_steps": "eval_every", "save_steps": "save_every", "logging_steps": "log_every", "steps": "max_steps",
            "gradient_checkpointing": "activation_checkpointing", "save_total_limit": "keep_last"}


def closest_key(key: str, known, elsewhere: dict[str, str] | None = None) -> str | None:
    """The known key a user most likely meant by ``key``: a close spelling (difflib), a known key it
    begins, a synonym, or (``elsewhere``: bare name -> dotted key of another section) the same name
    in another section (``lr`` -> ``training.lr``)."""
    known = [str(x) for x in known]
    key = str(key)
    elsewhere = elsewhere or {}
    if SYNONYMS.get(key) in known:
        return SYNONYMS[key]
    for name in (key, SYNONYMS.get(key)):  # the same name in another section: eval_every -> training.eval_every
        if name in elsewhere:
            return elsewhere[name]
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return close[0]
    starts = [k for k in known if k.startswith(key + "_")]
    if len(starts) == 1:
        return starts[0]
    close = difflib.get_close_matches(key, list(elsewhere), n=1)
    return elsewhere[close[0]] if close else None


def check_keys(given, known, section: str, elsewhere: dict[str, str] | None = None) -> None:
    """Refuse a key of ``given`` that is not in ``known`` (``section`` is its dotted parent, or ''),
    suggesting the closest (``closest_key``)."""
    unknown = [k for k in given if k not in known]
    if not unknown:
        return
    k = unknown[0]
    close = closest_key(k, known, elsewhere)
    hint = ""
    if close:
        hint = f" (did you mean {close}?)" if close not in known else f" (did you mean {section + '.' if section else ''}{close}?)"
    raise ConfigError(f"unknown key{hint}; the known keys{' of ' + section if section else ''} are "
                      f"{', '.join(sorted(known))}", f"{section}.{k}" if section else str(k))
