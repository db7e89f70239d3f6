"""Padding-free training: the real tokens of a batch packed into one ``[1, N]`` sequence.

A mixed-modality batch pads short text rows to the length of long image+speech rows (in the
benchmark's batch of 8, 1216 real tokens in 8 x 228 = 1824 slots). Packing removes every padded
slot from every norm, linear, residual add and attention buffer: the decoder runs on ``[1, N, D]``,
rows ordered by adapter (so each adapter's tokens are one contiguous span and the routed linears
need no gather), with per-row positions, and attention causal inside each row, never across
(``molora/attention.py``: per row, a block-diagonal mask, or FlashAttention's varlen kernel).

Two ways in, one layout:

- ``pack_batch`` (the trainer's collator): a padded processor batch -> a packed batch
  (``input_ids`` / ``labels`` / ``position_ids`` ``[1, N]``, ``cu_seqlens`` [rows + 1]) that
  ``MoLoRAModel.forward`` takes as is, with its media in the same order (rows are sorted by the
  adapter their input type routes to before the processor runs, so no media moves);
- ``PackedRows`` (``MoLoRAModel`` with ``fast_paths.pack``): a padded batch's token embeddings,
  positions and labels packed inside the forward.

Every real token gets the value it gets in the padded forward; only summation orders differ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters.route import gather_rows

__all__ = ["PackedRows", "pack_batch"]

ROW_KEYS = ("input_ids", "attention_mask", "labels")


class PackedRows:
    """Where each real token of a ``[B, T]`` batch goes in the packed ``[1, N]`` sequence."""

    def __init__(self, index: torch.Tensor, lengths: list[int], token_adapter: torch.Tensor, shape):
        self.index = index  # [N] flat positions (b * T + t) of the packed tokens, in packed order
        self.lengths = lengths  # per packed row (rows in packed order)
        self.token_adapter = token_adapter  # [N] adapter index of each packed token (non-decreasing)
        self.shape = tuple(shape)  # (B, T)
        self.cu_seqlens = F.pad(torch.tensor(lengths, device=index.device).cumsum(0), (1, 0))

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
        return cls(index, lens.tolist(), row_adapter[order].repeat_interleave(lens), (B, T))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [1, N, ...] (gradient flows back to the real positions)."""
        flat = x.reshape(self.shape[0] * self.shape[1], *x.shape[2:])
        if flat.dim() == 1:
            return flat[self.index][None]
        return gather_rows(flat, self.index)[None]


def pack_batch(batch: dict) -> dict:
    """A padded processor batch (right or left padding, ``labels`` optional) -> the packed batch
    ``MoLoRAModel.forward`` takes: rows concatenated in order without padding, ``position_ids``
    restarting at 0 in each row, ``cu_seqlens``; media tensors unchanged (they are in row order).
    For contiguous adapter spans, give the processor the rows sorted by input type first."""
    mask = batch["attention_mask"].bool()
    rows = range(mask.shape[0])
    lengths = [int(mask[r].sum()) for r in rows]
    out = {k: v for k, v in batch.items() if k not in ROW_KEYS}
    for key in ("input_ids", "labels"):
        if key in batch:
            out[key] = torch.cat([batch[key][r][mask[r]] for r in rows])[None]
    out["position_ids"] = torch.cat([torch.arange(n) for n in lengths])[None]
    out["cu_seqlens"] = F.pad(torch.tensor(lengths).cumsum(0), (1, 0))
    return out
