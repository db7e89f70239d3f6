"""Backbone families: how to build a decoder from ``BackboneConfig`` and how to read and write it.

One entry per architecture family, keyed by ``BackboneConfig.family``. A family knows the
transformers configuration class of its checkpoints, builds the routed decoder molora runs
(``molora/decoder.py``), and converts configurations both ways. The Phi-4 family (Phi-4-mini,
Phi-4-mini-reasoning, Phi-4 14B / Phi-4-reasoning) is transformers' Phi-3 architecture: the
``phi3`` entry. A new family is one module here plus its line in ``FAMILIES``.
"""
from __future__ import annotations

from ..errors import ConfigError
from . import phi3

FAMILIES = {"phi3": phi3}


def family(name: str):
    if name not in FAMILIES:
        raise ConfigError(f"unknown backbone family {name!r}; known: {sorted(FAMILIES)}", "backbone.family")
    return FAMILIES[name]


def build_backbone(b):
    """The routed decoder for a ``BackboneConfig`` (random init; checkpoints load over it)."""
    return family(b.family).build(b)
