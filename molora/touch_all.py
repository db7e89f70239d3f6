"""Sharded training (``MoLoRAModel.touch_all``, set by ``stages/sharding.py``): every trainable
tensor joins each process's autograd graph, so every process reduces the same gradients, in the
same order, even when its batch has no row of some modality. The decoder's LoRA linears join through
their route (``TokenRoute.touch_all``); the encoders, projectors and embeddings through
``join_every_trainable``, on the decoder's input.

Why the decoder's input: FSDP2 reduce-scatters a unit's gradients from autograd when the gradient
reaches the unit's inputs, and, for a unit whose inputs need no gradient, only in the callback at
the end of the backward, root unit first. A process whose rows are all text has token embeddings
that need no gradient (the embedding table is frozen; no projector output is spliced in), so its
first decoder layer would reduce-scatter after the root while the other processes' does before it:
a collective mismatch (gloo: "Received data size doesn't match expected size"). Joined there, the
decoder's input needs a gradient on every process or on none, whatever the rows.
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
