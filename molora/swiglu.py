"""The decoder MLP's gate, ``act(gate) * up``.

With one fused input linear (``[gate | up]`` halves of one output, SiLU), ``silu_gate`` runs it as
one autograd node that keeps only that output for backward (autograd's own version also keeps the
``silu(gate)`` tensor: half a [tokens, 2 * intermediate] buffer per layer) and writes both halves
of the input gradient into one buffer (no concatenation). With separate gate and up linears it is
autograd's own product."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _SiluGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        ctx.save_for_backward(gate_up)
        return up * F.silu(gate)

    @staticmethod
    def backward(ctx, grad):
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        out = torch.empty_like(gate_up)
        d_gate, d_up = out.chunk(2, dim=-1)
        # the kernels autograd would run for ``up * silu(gate)`` (same numbers), written in place
        torch.mul(grad, F.silu(gate), out=d_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=d_gate)
        return out


def silu_gate(gate_up: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and gate_up.requires_grad:
        return _SiluGate.apply(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return up * F.silu(gate)


def gated(parts: list[torch.Tensor], act) -> torch.Tensor:
    """``act(gate) * up`` from the MLP input linears' outputs: ``[gate_up]`` (fused, SiLU) or ``[gate, up]``."""
    if len(parts) == 1:
        return silu_gate(parts[0])
    gate, up = parts
    return act(gate) * up
