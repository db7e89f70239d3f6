"""One autograd node for a routed LoRA linear whose adapters own contiguous token spans.

``y = x @ W.T + b``, then for each adapter g with span [s, e): ``y[s:e] += scale_g *
drop(x[s:e]) @ A_g.T @ B_g.T``. Written out by hand so that neither direction copies the
big tensors: the LoRA terms are added in place into views of ``y`` (forward) and of ``dx``
(backward), the only saved activations are ``x`` itself (shared with nothing new), the small
``[n_g, r]`` products and, with dropout, a bool mask. Autograd's generic version of the same
computation clones the output gradient and zero-fills a full-size input gradient per adapter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _RoutedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, spans, scales, drops, *ab):
        y = F.linear(x, weight, bias)
        hs, masks = [], []
        for k, ((s, e), scale, p) in enumerate(zip(spans, scales, drops)):
            a, b = ab[2 * k], ab[2 * k + 1]
            xg, mask = x[s:e], None
            if p > 0:  # dropout: a bool mask on the LoRA input, its 1/(1-p) folded into the small h
                mask = torch.empty(xg.shape, dtype=torch.bool, device=x.device).bernoulli_(1 - p)
                h = torch.mm(xg * mask, a.t()).mul_(1.0 / (1 - p))
            else:
                h = xg @ a.t()
            y[s:e].addmm_(h, b.t(), alpha=scale)
            hs.append(h)
            masks.append(mask)
        ctx.spans, ctx.scales, ctx.drops, ctx.has_bias = spans, scales, drops, bias is not None
        ctx.save_for_backward(x, weight, *ab, *hs, *masks)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, *rest = ctx.saved_tensors
        n = len(ctx.spans)
        ab, hs, masks = rest[: 2 * n], rest[2 * n: 3 * n], rest[3 * n:]
        need = ctx.needs_input_grad
        grad = grad.contiguous()
        dx = grad @ weight if need[0] else None
        dw = grad.t() @ x if need[1] else None
        db = grad.sum(0) if ctx.has_bias and need[2] else None
        dab: list[torch.Tensor | None] = []
        for k, ((s, e), scale, p) in enumerate(zip(ctx.spans, ctx.scales, ctx.drops)):
            a, b, h, mask = ab[2 * k], ab[2 * k + 1], hs[k], masks[k]
            g = grad[s:e]
            db_k = torch.mm(g.t(), h).mul_(scale) if need[7 + 2 * k] else None
            dh = torch.mm(g, b).mul_(scale if mask is None else scale / (1 - p))
            da_k = None
            if need[6 + 2 * k]:
                da_k = torch.mm(dh.t(), x[s:e] if mask is None else x[s:e] * mask)
            if dx is not None:
                if mask is None:
                    dx[s:e].addmm_(dh, a)
                else:
                    dx[s:e].addcmul_(torch.mm(dh, a), mask)
            dab += [da_k, db_k]
        return (dx, dw, db, None, None, None, *dab)


def routed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  adapters: list[tuple[slice, torch.Tensor, torch.Tensor, float, float]]) -> torch.Tensor:
    """``x`` [N, in]; ``adapters``: (span, A [r, in], B [out, r], scaling, dropout p) per adapter.

    Under autocast every operand is cast to the autocast dtype first, as autocast casts the
    matmuls of the plain computation (the casts are autograd ops: gradients reach the weights in
    their own dtype); otherwise all operands must share one dtype."""
    ab = [t for _, a, b, _, _ in adapters for t in (a, b)]
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dt = torch.get_autocast_dtype(device)
        x, weight = x.to(dt), weight.to(dt)
        bias = None if bias is None else bias.to(dt)
        ab = [t.to(dt) for t in ab]
    elif any(t.dtype != x.dtype for t in (weight, *ab)):
        raise TypeError(f"routed_linear: operands of different dtypes ({x.dtype}, {weight.dtype}, ...) outside autocast")
    spans = [(sp.start, sp.stop) for sp, *_ in adapters]
    with torch.autocast(device, enabled=False):
        return _RoutedLinear.apply(x, weight, bias, spans, [c[3] for c in adapters], [c[4] for c in adapters], *ab)
