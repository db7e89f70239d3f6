"""Renaming state-dict keys with ordered regex rules (first matching rule wins), below a prefix."""
from __future__ import annotations

import re
from typing import Mapping


def rename_keys(sd: Mapping, rules: list[tuple[str, str]], prefix: str = "") -> dict:
    """Keys that start with ``prefix`` are renamed after it by the first rule that matches;
    other keys pass through unchanged."""
    out = {}
    for key, value in sd.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            for pattern, repl in rules:
                rest, n = re.subn(pattern, repl, rest)
                if n:
                    break
            key = prefix + rest
        out[key] = value
    return out
