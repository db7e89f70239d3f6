"""Attention kernels of the decoder, one per batch layout; the execution plan picks one.

Every kernel takes queries ``[B, H, Tq, d]`` and keys / values ``[B, Hkv, Tk, d]`` (grouped-query:
SDPA's ``enable_gqa`` reads key head ``h // (H / Hkv)`` for query head ``h``, no K/V copies) and
returns ``[B, Tq, H, d]``.

- ``padded``: one SDPA over the padded batch with a boolean mask (causal and key padding), or
  SDPA's own causal mask when nothing is padded;
- ``length_groups``: rows of very different lengths bucketed by length, each bucket attending
  inside the window of its longest row (a batch that mixes 80- and 230-token rows does not pay
  230^2 for the short ones);
- packed (``[1, N]``: rows concatenated without padding, ``cu_seqlens`` marks where each starts):
  ``rows`` runs SDPA row by row on views; ``block`` runs one SDPA with a block-diagonal causal
  mask; ``flash`` runs FlashAttention's varlen kernel when the ``flash_attn`` package is installed
  (CUDA, half precision). All three compute causal attention inside each row and never across.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LengthGroups", "padded_attention", "grouped_attention", "packed_attention", "padding_mask",
           "flash_available", "PACKED_BACKENDS"]

PACKED_BACKENDS = ("rows", "block", "flash")


def flash_available(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def padding_mask(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """[B, 1, q_len, Tk] bool: a query sees the real keys at or before its own position. The
    queries are the last ``q_len`` positions of the ``Tk`` keys. A padding query (no real key at or
    before it, in a left-padded row) sees itself only, so no row of the softmax is empty; nothing
    reads those outputs."""
    real = attention_mask.bool()
    B, Tk = real.shape
    q_pos = torch.arange(Tk - q_len, Tk, device=real.device)
    k_pos = torch.arange(Tk, device=real.device)
    allowed = (k_pos[None, :] <= q_pos[:, None])[None] & real[:, None, :]
    return (allowed | (k_pos[None, :] == q_pos[:, None])[None])[:, None]


def padded_attention(q, k, v, mask: torch.Tensor | None, dropout: float = 0.0, scale: float | None = None):
    causal = mask is None and q.shape[2] > 1
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, is_causal=causal,
                                         enable_gqa=True)
    return out.transpose(1, 2)


@dataclass(frozen=True)
class LengthGroups:
    """Buckets of rows of a padded batch with their attention windows ``[lo, hi)``."""

    length: int
    groups: tuple  # ((row index tensor, lo, hi), ...)

    @classmethod
    def plan(cls, attention_mask: torch.Tensor, min_saving: float = 0.2) -> "LengthGroups | None":
        """None unless every row is one run of real tokens at the same end, and grouping saves at
        least ``min_saving`` of the attention work."""
        mask = attention_mask.bool()
        B, T = mask.shape
        lens = mask.sum(-1)
        pos = torch.arange(T, device=mask.device)
        if bool((mask == (pos[None, :] < lens[:, None])).all()):
            right = True
        elif bool((mask == (pos[None, :] >= T - lens[:, None])).all()):
            right = False
        else:
            return None
        order = torch.argsort(lens, descending=True).tolist()
        lens_l = lens.tolist()
        buckets: list[list[int]] = []
        for r in order:  # longest first; a row joins the open bucket while it is at least 3/4 as long
            if buckets and lens_l[r] * 4 >= lens_l[buckets[-1][0]] * 3:
                buckets[-1].append(r)
            else:
                buckets.append([r])
        cost = sum(len(b) * lens_l[b[0]] ** 2 for b in buckets)
        if len(buckets) < 2 or cost > (1 - min_saving) * B * T * T:
            return None
        groups = []
        for b in buckets:
            n = max(lens_l[b[0]], 1)
            lo, hi = (0, n) if right else (T - n, T)
            groups.append((torch.tensor(sorted(b), device=mask.device), lo, hi))
        return cls(T, tuple(groups))


def grouped_attention(q, k, v, mask: torch.Tensor, groups: LengthGroups, dropout: float = 0.0,
                      scale: float | None = None):
    """Attention per length bucket; outputs outside a row's window are 0 (padding: nobody reads them)."""
    B, H, T, D = q.shape
    out = q.new_zeros(B, T, H, v.shape[-1])
    for rows, lo, hi in groups.groups:
        o = F.scaled_dot_product_attention(q[rows, :, lo:hi], k[rows, :, lo:hi], v[rows, :, lo:hi],
                                           attn_mask=mask[rows][:, :, lo:hi, lo:hi], dropout_p=dropout,
                                           scale=scale, enable_gqa=True)
        out = out.index_put((rows[:, None], torch.arange(lo, hi, device=out.device)[None, :]), o.transpose(1, 2))
    return out


def packed_attention(q, k, v, cu_seqlens: torch.Tensor, lengths: list[int], backend: str, dropout: float = 0.0,
                     scale: float | None = None):
    """Causal attention inside each packed row of ``[1, H, N, d]`` states -> ``[1, N, H, d]``."""
    if backend == "rows":
        outs = []  # split, not slices: backward joins the rows' gradients in one cat
        for qr, kr, vr in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2)):
            if qr.shape[2]:
                outs.append(F.scaled_dot_product_attention(qr, kr, vr, dropout_p=dropout, scale=scale, is_causal=True,
                                                           enable_gqa=True).transpose(1, 2))
        return torch.cat(outs, 1)
    if backend == "block":
        seq = torch.repeat_interleave(torch.arange(len(lengths), device=q.device),
                                      torch.tensor(lengths, device=q.device))
        pos = torch.arange(q.shape[2], device=q.device)
        mask = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None], dropout_p=dropout, scale=scale,
                                              enable_gqa=True).transpose(1, 2)
    if backend == "flash":
        from flash_attn import flash_attn_varlen_func

        cu = cu_seqlens.to(q.device, torch.int32)
        longest = max(lengths)
        out = flash_attn_varlen_func(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu,
                                     longest, longest, dropout_p=dropout, softmax_scale=scale, causal=True)
        return out[None]
    raise ValueError(f"unknown packed attention backend {backend!r}; choose one of {PACKED_BACKENDS}")
