"""Padding-free training forward: the real tokens of a padded batch packed into one sequence.

A mixed-modality batch pads short text rows to the length of long image+speech rows (in the
benchmark's batch of 8, 1216 real tokens in 8 x 228 = 1824 slots). Dropping padding inside the
linears alone still leaves every norm, residual add and attention buffer at the padded size,
plus a gather and a zero-filled scatter around each linear. Packing removes all of it: the
decoder runs on ``[1, N, D]`` (N real tokens), rows ordered by adapter (so each adapter's tokens
are one contiguous span: the routed linears need no gather at all), with per-row positions, and
attention runs row by row on views of the packed queries / keys / values (causal inside a row,
never across rows).

Every real token gets the same value as in the padded forward (attention sees the same keys:
a row's own earlier real tokens); only summation orders in the loss differ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters.routing import gather_rows


class PackedRows:
    """Where each real token of a ``[B, T]`` batch goes in the packed ``[1, N]`` sequence."""

    def __init__(self, index: torch.Tensor, spans: list[tuple[int, int]], token_adapter: torch.Tensor, shape):
        self.index = index  # [N] flat positions (b * T + t) of the packed tokens, in packed order
        self.spans = spans  # per packed row: [start, end) in the packed sequence
        self.token_adapter = token_adapter  # [N] adapter index of each packed token (non-decreasing)
        self.shape = tuple(shape)  # (B, T)

    @property
    def n(self) -> int:
        return int(self.index.numel())

    @classmethod
    def plan(cls, attention_mask: torch.Tensor, row_adapter: torch.Tensor) -> "PackedRows":
        """Rows ordered by adapter index (stable), each row's real tokens in order."""
        mask = attention_mask.bool()
        B, T = mask.shape
        order = torch.sort(row_adapter, stable=True).indices
        keep = mask[order]  # [B, T] rows in packed order
        lens = keep.sum(-1)
        index = (order[:, None] * T + torch.arange(T, device=mask.device)[None, :])[keep]
        ends = lens.cumsum(0).tolist()
        spans = [(e - n, e) for e, n in zip(ends, lens.tolist())]
        return cls(index, spans, row_adapter[order].repeat_interleave(lens), (B, T))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [1, N, ...] (gradient flows back to the real positions)."""
        flat = x.reshape(self.shape[0] * self.shape[1], *x.shape[2:])
        if flat.dim() == 1:
            return flat[self.index][None]
        return gather_rows(flat, self.index)[None]

    def attention(self, query, key, value, dropout: float = 0.0, scaling: float | None = None) -> torch.Tensor:
        """Causal attention inside each row of the packed ``[1, H, N, d]`` states, on views (no
        copies in); returns ``[1, N, H, d]`` like transformers' attention functions."""
        lens = [e - s for s, e in self.spans]
        outs = []  # split, not slices: backward joins the rows' gradients in one cat (a slice's fills zeros)
        for q, k, v in zip(query.split(lens, 2), key.split(lens, 2), value.split(lens, 2)):
            if q.shape[2]:
                o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True,
                                                   enable_gqa=True)
                outs.append(o.transpose(1, 2))
        return torch.cat(outs, 1)
