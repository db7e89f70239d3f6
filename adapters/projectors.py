"""The two-layer MLP projectors that map encoder features into the language model's width."""
from __future__ import annotations

from torch import nn


def mlp_projector(in_features: int, out_features: int) -> nn.Sequential:
    """Linear -> GELU (exact) -> Linear; keys `.0.*` and `.2.*` as in the official checkpoint."""
    return nn.Sequential(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))
