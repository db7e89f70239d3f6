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
  mask; ``flex`` runs torch's FlexAttention, compiled (``torch.compile``: a fused Triton kernel on
  CUDA, a C++ template on the CPU, forward only there), with a document mask built from
  ``cu_seqlens`` (``document_block_mask``: tiles of 128 x 128 queries and keys, the ones outside
  every row skipped, the ones inside one row unmasked); ``flex_eager`` is the same call without
  compiling (torch's unfused implementation: the scores materialized; any float dtype, forward
  only on the CPU), the reference the compiled kernel is checked against; ``flash`` runs
  FlashAttention's varlen kernel when the ``flash_attn`` package is installed (CUDA, half
  precision). All of them compute causal attention inside each row and never across (no sliding
  window: molora's decoder attends to the whole context, ``checkpoint_layouts._check_sliding_window``).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LengthGroups", "padded_attention", "grouped_attention", "packed_attention", "padding_mask",
           "flash_available", "flex_available", "document_block_mask", "PACKED_BACKENDS", "FLEX_BACKENDS"]

PACKED_BACKENDS = ("rows", "block", "flex", "flex_eager", "flash")
FLEX_BACKENDS = ("flex", "flex_eager")  # need a document block mask (``document_block_mask``)
FLEX_TILE = 128  # FlexAttention's default sparse block: queries x keys per tile of the block mask


def flash_available(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def flex_available(device: torch.device) -> bool:
    """Compiled FlexAttention can run forward and backward on ``device``: CUDA, a torch that ships
    ``torch.nn.attention.flex_attention``, and Triton for inductor to compile the kernel with."""
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return bool(torch._dynamo.is_dynamo_supported() and has_triton())


def document_block_mask(cu_seqlens: torch.Tensor, n: int, tile: int = FLEX_TILE):
    """FlexAttention's ``BlockMask`` of causal attention inside each row of a packed ``[1, n]``
    sequence (``cu_seqlens``: where each row starts), laid over the sequence padded to whole tiles,
    two at least (the padding: a row of its own, so every query sees at least itself and no real token sees
    it; ``_flex`` pads the states the same way, which keeps the compiled kernel to one shape class).
    Built from the rows' tiles directly, in ``(n / tile)^2`` work and memory (``create_block_mask``
    evaluates the mask at all ``n^2`` pairs): a key tile before a query tile is *full* when one row
    covers both tiles whole, *partial* when some row reaches from one into the other, skipped
    otherwise; the diagonal tile is partial. Partial tiles run the per-pair mask (same row, key not
    after query)."""
    from torch.nn.attention.flex_attention import BlockMask

    device = cu_seqlens.device
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    rows = lengths.numel()
    tiles = max(-(-n // tile), 2)  # one tile would be a shape class of its own (and fail on the CPU)
    doc = torch.repeat_interleave(torch.arange(rows, device=device), lengths)
    doc = F.pad(doc, (0, tiles * tile - n), value=rows)  # the padding: a row of its own
    first, last = doc.view(tiles, tile)[:, 0], doc.view(tiles, tile)[:, -1]
    idx = torch.arange(tiles, device=device)
    before = idx[None, :] < idx[:, None]  # [q tile, kv tile]: the key tile lies wholly before
    one_row = first == last
    full = before & (one_row[:, None] & one_row[None, :] & (first[:, None] == first[None, :]))
    partial = (idx[None, :] == idx[:, None]) | (before & (last[None, :] >= first[:, None]) & ~full)

    def ordered(m):  # per query tile: how many key tiles, and their indices first (in order)
        order = torch.argsort((~m).to(torch.int8), dim=-1, stable=True)
        return m.sum(-1).to(torch.int32)[None, None], order.to(torch.int32)[None, None]

    def same_row_causal(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx)

    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=tile, mask_mod=same_row_causal,
                                    seq_lengths=(tiles * tile, tiles * tile))


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic: one compiled kernel for every length (all whole tiles, see ``_flex``), not one per batch
    return torch.compile(flex_attention, dynamic=True)


def _flex(q, k, v, block_mask, scale, compiled: bool):
    """FlexAttention of ``[1, H, N, d]`` states under ``block_mask`` -> ``[1, N, H, d]``. The states
    are padded to the mask's whole tiles (inductor's CPU kernel fails to compile for a length that
    is not a multiple of its tile once shapes are dynamic; one length class also means one compile)
    and the padding's outputs dropped. q, k, v in one dtype: autocast's when it is on (as SDPA gets
    them), else the queries'."""
    from torch.nn.attention.flex_attention import flex_attention

    kind, n = q.device.type, q.shape[2]
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else q.dtype
    pad = block_mask.seq_lengths[0] - n
    q, k, v = (F.pad(t.to(dtype), (0, 0, 0, pad)) for t in (q, k, v))
    gqa = q.shape[1] != k.shape[1]
    if compiled:
        return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)[:, :, :n].transpose(1, 2)
    with warnings.catch_warnings():  # uncompiled on purpose (flex_eager): torch's advice to compile is moot
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)[:, :, :n].transpose(1, 2)


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
                     scale: float | None = None, block_mask=None):
    """Causal attention inside each packed row of ``[1, H, N, d]`` states -> ``[1, N, H, d]``.
    ``flex`` / ``flex_eager`` take the rows' ``block_mask`` (``document_block_mask``, built once per
    call) and no dropout (the plan does not choose them when attention drops out)."""
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
    if backend in FLEX_BACKENDS:
        if dropout:
            raise ValueError("FlexAttention has no attention dropout: packed_attention='rows' or 'block'")
        if block_mask is None:
            block_mask = document_block_mask(cu_seqlens.to(q.device), q.shape[2])
        return _flex(q, k, v, block_mask, scale, compiled=backend == "flex")
    if backend == "flash":
        from flash_attn import flash_attn_varlen_func

        cu = cu_seqlens.to(q.device, torch.int32)
        longest = max(lengths)
        out = flash_attn_varlen_func(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu,
                                     longest, longest, dropout_p=dropout, softmax_scale=scale, causal=True)
        return out[None]
    raise ValueError(f"unknown packed attention backend {backend!r}; choose one of {PACKED_BACKENDS}")
