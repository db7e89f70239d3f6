"""TokenRoute: which LoRA adapter each token of one forward call uses, given to the routed layers per
call (the config's ``RouterEntry`` says which adapter an input type uses; this says which tokens).

The model builds one ``TokenRoute`` per forward (``TokenRoute.build``) from the adapter of every batch
row (or every token) and the padding mask, and passes it down with the hidden states; the decoder
layers hand it to their routed linears. Nothing is stored on the layers between calls, so two calls (a
training step and the recomputation of one of its layers under activation checkpointing, or two
models sharing no state) cannot see each other's routes.

Token spaces. The hidden states of a call are ``[B, T, D]``. When some tokens are padding and
``drop_padding`` is on, the routed linears and MLPs run on the real tokens only: ``gather`` takes
them out in adapter order (``kept``: flat indices into B*T, sorted by adapter, row-major inside an
adapter) and ``scatter`` puts results back (zeros at padding). Without padding, or with
``drop_padding`` off, every token is kept in its own order. ``groups`` maps each adapter that has
tokens to those tokens in the kept space: ``None`` (all of them), a ``slice`` (a contiguous span:
the LoRA reads and writes views, no copies) or an index tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

__all__ = ["TokenRoute", "gather_rows"]


@dataclass(frozen=True)
class TokenRoute:
    n_tokens: int  # B*T of the hidden states this route was made for
    kept: torch.Tensor | None = None  # flat indices of the kept tokens (None: all, in order)
    groups: dict = field(default_factory=dict)  # adapter -> None | slice | index tensor, in the kept space
    shape: tuple[int, int] = (0, 0)  # (B, T)
    touch_all: bool = False  # sharded training: adapters no token uses join the graph with zero
    merged: bool = False  # inference with one adapter for every token: a cached merged weight per linear
    fused: bool = True  # the one-node autograd LoRA when every group is a span

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def build(cls, adapter_of: torch.Tensor | None, shape: tuple[int, int], adapter_names: list[str],
              real: torch.Tensor | None = None, *, drop_padding: bool = True, **flags) -> "TokenRoute":
        """``adapter_of``: [B] adapter index per row or [B, T] per token (-1: none), or None (no
        adapter anywhere); ``real``: [B, T] bool of real tokens, or None (all real)."""
        B, T = shape
        n = B * T
        if adapter_of is None:
            return cls(n, shape=shape, **flags)
        token_adapter = (adapter_of if adapter_of.dim() == 2 else adapter_of[:, None].expand(B, T)).reshape(-1)
        if real is not None and drop_padding and not bool(real.all()):
            mask = real.reshape(-1).to(token_adapter.device)
            n_kept = int(mask.sum())
            key = token_adapter.masked_fill(~mask, len(adapter_names))  # padding sorts last
            kept = torch.sort(key, stable=True).indices[:n_kept]
            return cls(n, kept, _spans(key[kept], adapter_names, n_kept), shape, **flags)
        if n > 1 and bool((token_adapter[1:] >= token_adapter[:-1]).all()):  # already in adapter order
            return cls(n, None, _spans(token_adapter, adapter_names, n), shape, **flags)
        groups = {}
        for k, name in enumerate(adapter_names):
            sel = (token_adapter == k).nonzero().flatten()
            if sel.numel():
                groups[name] = None if sel.numel() == n else sel
        return cls(n, None, groups, shape, **flags)

    def narrowed(self, used: torch.Tensor) -> "TokenRoute":
        """The route restricted to the tokens in ``used`` ([B, T] bool, a subset of the kept ones),
        in the same order; for a layer that runs only on the positions whose output is read."""
        order = self.kept if self.kept is not None else torch.arange(self.n_tokens, device=used.device)
        keep = used.reshape(-1).to(order.device)[order]
        kept = order[keep]
        groups = {}
        # the kept order is grouped by adapter: each group's share of ``keep`` stays contiguous
        position = torch.cumsum(keep.long(), 0) - 1
        for name, sel in self.groups.items():
            if sel is None:
                groups[name] = None
                continue
            idx = torch.arange(order.numel(), device=order.device)[sel] if isinstance(sel, slice) else sel
            mine = idx[keep[idx]]
            if mine.numel() == 0:
                continue
            new = position[mine]
            if isinstance(sel, slice):
                groups[name] = slice(int(new[0]), int(new[-1]) + 1)
            else:
                groups[name] = new
        if len(groups) == 1 and next(iter(groups.values())) is not None and \
                _covers(next(iter(groups.values())), kept.numel()):
            groups = {next(iter(groups)): None}
        return replace(self, kept=kept, groups=groups)

    # -- use --------------------------------------------------------------------------------
    @property
    def n_kept(self) -> int:
        return self.n_tokens if self.kept is None else int(self.kept.numel())

    @property
    def adapters(self) -> bool:
        return bool(self.groups) or self.touch_all

    def gather(self, h: torch.Tensor) -> torch.Tensor:
        """[..., D] hidden states of this call -> [n_kept, D] in the kept order."""
        flat = h.reshape(-1, h.shape[-1])
        return flat if self.kept is None else gather_rows(flat, self.kept)

    def scatter(self, y: torch.Tensor) -> torch.Tensor:
        """[n_kept, D] -> [B, T, D] (zeros at the tokens that were not kept)."""
        if self.kept is None:
            return y.view(*self.shape, y.shape[-1])
        full = y.new_zeros(self.n_tokens, y.shape[-1]).index_copy(0, self.kept, y)
        return full.view(*self.shape, y.shape[-1])

    def scatter_sum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``scatter(a + b)`` as a tensor of its own, not a view of another: a decoder layer's output,
        which FSDP2 hooks for its backward (an in-place op on a view would drop the hook; torch warns
        of any view)."""
        if self.kept is None:
            return a.view(*self.shape, a.shape[-1]) + b.view(*self.shape, b.shape[-1])
        T = self.shape[1]
        return a.new_zeros(*self.shape, a.shape[-1]).index_put((self.kept // T, self.kept % T), a + b)


def _spans(sorted_adapter: torch.Tensor, adapter_names: list[str], n_kept: int) -> dict:
    """Groups as slices of tokens already sorted by adapter index (-1, none, first)."""
    counts = torch.bincount(sorted_adapter + 1, minlength=len(adapter_names) + 1).tolist()
    groups, start = {}, counts[0]
    for name, c in zip(adapter_names, counts[1:]):
        if c:
            groups[name] = None if c == n_kept else slice(start, start + c)
        start += c
    return groups


def _covers(sel, n: int) -> bool:
    if isinstance(sel, slice):
        return sel.start == 0 and sel.stop == n
    return sel.numel() == n


class _GatherRows(torch.autograd.Function):
    """``x.index_select(0, idx)`` for unique ``idx``: backward writes the rows back with
    ``index_copy`` (index_select's own backward is a scatter-add over an index expanded to the
    full gradient's size, several times the memory traffic)."""

    @staticmethod
    def forward(ctx, x, idx):
        ctx.save_for_backward(idx)
        ctx.n_rows = x.shape[0]
        return x.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        return grad.new_zeros(ctx.n_rows, *grad.shape[1:]).index_copy_(0, idx, grad), None


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (unique) of a 2-D tensor, with a cheap backward."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _GatherRows.apply(x, idx)
    return x.index_select(0, idx)
