"""Sharded training (``MoLoRAModel.touch_all``, set by ``stages/sharding.py``): every trainable
tensor joins each process's autograd graph, so every process reduces the same gradients even when
its batch has no row of some modality. The decoder's LoRA linears join through their route
(``TokenRoute.touch_all``); the encoders and projectors through ``join_every_trainable``.
"""
from __future__ import annotations

import torch

__all__ = ["join_every_trainable"]


def join_every_trainable(model, hidden: torch.Tensor, plan) -> torch.Tensor:
    """``hidden`` plus zero times every trainable tensor outside the decoder layers when the plan
    says ``touch_all`` (the same value; a zero gradient for a tensor the batch did not use); else
    ``hidden`` itself."""
    if not plan.touch_all:
        return hidden
    return hidden + sum(0.0 * p.sum() for n, p in model.named_parameters()
                        if p.requires_grad and not n.startswith("language_model.layers."))
