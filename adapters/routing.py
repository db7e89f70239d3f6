"""Per-forward routing state shared by every routed LoRA layer of one model.

The model sets, once per forward, which adapter each batch row uses (an index into the model's
adapter names, -1 for none) and which tokens are real (not padding). Every `RoutedLoRALinear`
reads the precomputed token groups from here, so the routing decision costs a few small tensor
ops per forward, not per layer. Padding tokens skip the linears entirely (their outputs are
zeros, which attention masks out and the loss ignores): a mixed batch pads short text rows to
the length of long image+speech rows, and this keeps that padding from costing matmuls.

When padding is dropped, the kept tokens are ordered by adapter (row-major inside each
adapter), so each adapter's tokens are one contiguous slice: the LoRA of an adapter reads a
view of the kept tokens and adds into a view of the output, with no per-adapter copies and no
scatter-add in backward. A packed training batch (molora/packing.py) arrives with its rows
already in adapter order and no padding: its groups are slices with no gather at all.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


class RoutingState:
    def __init__(self, adapter_names: list[str]):
        self.adapter_names = list(adapter_names)
        # sharded training (FSDP2) needs every trainable tensor in every process's graph, even an
        # adapter no row of this process uses: such tensors then join with a zero contribution
        self.touch_all = False
        self.clear()

    def clear(self) -> None:
        self.active = False
        self.n_tokens = 0  # B*T of the hidden states this state was set for
        self.shape: tuple[int, int] = (0, 0)
        self.tokens: torch.Tensor | None = None  # flat indices of real tokens (None: all are real)
        # adapter -> its kept tokens: None (all), a slice (padding dropped: tokens are grouped by
        # adapter) or an index tensor (no padding, several adapters)
        self.groups: dict[str, torch.Tensor | slice | None] = {}

    def set(self, row_adapter: torch.Tensor | None, seq_len: int, token_mask: torch.Tensor | None = None) -> None:
        """row_adapter: [B] adapter index per row (-1: none), [B, T] per token, or None (base only);
        token_mask: [B, T] bool of real tokens, or None (all real)."""
        self.clear()
        if row_adapter is None:
            return
        B = int(row_adapter.shape[0])
        self.active, self.n_tokens, self.shape = True, B * seq_len, (B, seq_len)
        if row_adapter.dim() == 2:
            token_adapter = row_adapter.reshape(-1)
        else:
            token_adapter = row_adapter[:, None].expand(B, seq_len).reshape(-1)
        if token_mask is not None and not bool(token_mask.all()):
            real = token_mask.reshape(-1)
            n_kept = int(real.sum())
            # real tokens sorted by adapter (stable), padding last: each adapter is one slice
            key = token_adapter.masked_fill(~real, len(self.adapter_names))
            self.tokens = torch.sort(key, stable=True).indices[:n_kept]
            self._spans(key[self.tokens], n_kept)
            return
        n_kept = token_adapter.numel()
        if n_kept > 1 and bool((token_adapter[1:] >= token_adapter[:-1]).all()):  # sorted (a packed batch)
            self._spans(token_adapter, n_kept)
            return
        for k, name in enumerate(self.adapter_names):
            sel = (token_adapter == k).nonzero().flatten()
            if sel.numel():
                self.groups[name] = None if sel.numel() == n_kept else sel

    def _spans(self, sorted_adapter: torch.Tensor, n_kept: int) -> None:
        """Groups as slices of tokens already sorted by adapter index (-1, none, first)."""
        counts = torch.bincount(sorted_adapter + 1, minlength=len(self.adapter_names) + 1).tolist()
        start = counts[0]
        for name, c in zip(self.adapter_names, counts[1:]):
            if c:
                self.groups[name] = None if c == n_kept else slice(start, start + c)
            start += c

    @property
    def n_kept(self) -> int:
        return self.n_tokens if self.tokens is None else int(self.tokens.numel())

    def snapshot(self) -> tuple:
        return (self.active, self.n_tokens, self.tokens, self.groups, self.shape)

    def load(self, snap: tuple) -> None:
        self.active, self.n_tokens, self.tokens, self.groups, self.shape = snap

    @contextmanager
    def restored(self, snap: tuple):
        """Re-enter a snapshot, e.g. while activation checkpointing recomputes a layer in backward."""
        prev = self.snapshot()
        self.active, self.n_tokens, self.tokens, self.groups, self.shape = snap
        try:
            yield self
        finally:
            self.active, self.n_tokens, self.tokens, self.groups, self.shape = prev

    @contextmanager
    def route(self, row_adapter: torch.Tensor | None, seq_len: int = 1, token_mask: torch.Tensor | None = None):
        prev = self.snapshot()
        self.set(row_adapter, seq_len, token_mask)
        try:
            yield self
        finally:
            self.active, self.n_tokens, self.tokens, self.groups, self.shape = prev

    # -- padding-free blocks: gather real tokens before a token-wise block, scatter after ------
    def gather(self, h: torch.Tensor) -> torch.Tensor | None:
        if not self.active or self.tokens is None or h.shape[:-1].numel() != self.n_tokens:
            return None
        return gather_rows(h.reshape(-1, h.shape[-1]), self.tokens)

    def scatter(self, y: torch.Tensor) -> torch.Tensor:
        full = y.new_zeros(self.n_tokens, y.shape[-1]).index_copy(0, self.tokens, y)
        return full.view(*self.shape, y.shape[-1])


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
