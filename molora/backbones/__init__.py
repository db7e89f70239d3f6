"""Backbone families: how to build a decoder from ``BackboneConfig`` and how to read and write it.

One ``BackboneFamily`` (``family.py``) per architecture, keyed by ``BackboneConfig.family``. A family
names transformers' classes of its checkpoints, lays out its projections (fused ``qkv_proj`` /
``gate_up_proj`` or one linear each), says which linears adapters adapt by default (all of them)
and reads a transformers ``config.json``. The Phi-4 family (Phi-4-mini, Phi-4-mini-reasoning,
Phi-4 14B / Phi-4-reasoning) is transformers' Phi-3 architecture: the ``phi3`` entry. A new family
is one module here plus its line in ``FAMILIES``.
"""
from __future__ import annotations

from ..errors import ConfigError
from .family import BackboneFamily
from .llama import LLAMA, QWEN2
from .phi3 import PHI3

FAMILIES: dict[str, BackboneFamily] = {f.name: f for f in (PHI3, LLAMA, QWEN2)}


def family(name: str) -> BackboneFamily:
    if name not in FAMILIES:
        raise ConfigError(f"unknown backbone family {name!r}; known: {sorted(FAMILIES)}", "backbone.family")
    return FAMILIES[name]


def family_of_model_type(model_type) -> BackboneFamily | None:
    """The family whose checkpoints have this config.json ``model_type`` (None: no family's)."""
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)


def build_backbone(b):
    """The routed decoder for a ``BackboneConfig`` (random init; checkpoints load over it)."""
    return family(b.family).build(b)
