"""Per-sample routing state shared by every routed LoRA layer of one model.

The model sets, once per forward, which adapter each batch row uses (an index into the
model's adapter names, -1 for none). Every `RoutedLoRALinear` reads the precomputed row
groups from here, so the routing decision costs one small tensor op per forward, not per layer.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


class RoutingState:
    def __init__(self, adapter_names: list[str]):
        self.adapter_names = list(adapter_names)
        self.rows: dict[str, torch.Tensor | None] | None = None  # None: no routing (base only)
        self.batch_size = 0

    def set(self, row_adapter: torch.Tensor | None) -> None:
        """row_adapter: LongTensor [B] with an adapter index per row (-1: none), or None."""
        if row_adapter is None:
            self.rows, self.batch_size = None, 0
            return
        self.batch_size = int(row_adapter.numel())
        rows: dict[str, torch.Tensor | None] = {}
        for k, name in enumerate(self.adapter_names):
            sel = (row_adapter == k).nonzero().flatten()
            if sel.numel() == 0:
                continue
            # None means "every row": the adapter runs on the whole batch without gathering
            rows[name] = None if sel.numel() == self.batch_size else sel
        self.rows = rows

    @contextmanager
    def route(self, row_adapter: torch.Tensor | None):
        prev = (self.rows, self.batch_size)
        self.set(row_adapter)
        try:
            yield self
        finally:
            self.rows, self.batch_size = prev
