"""The route step of a forward: from the execution plan to the token layout the decoder runs on.

``make_layout`` decides, for one call, the positions, the attention kernel and its inputs
(``Attend``), the LoRA ``TokenRoute`` of every token, the narrower route of the positions whose output
is read (for the last layer), and the next-token target of every position; packing a padded batch
first when the plan says so (``molora/packing.py``). ``logits_and_loss`` turns the decoder's output
into logits and the loss, in whatever layout the call ran.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .adapters.route import TokenRoute
from .attention import LengthGroups, padding_mask
from .decoder import Attend
from .loss import IGNORE_INDEX, loss_precision, next_token_targets
from .packing import PackedRows
from .plan import ExecutionPlan

__all__ = ["TokenLayout", "make_layout", "logits_and_loss", "positions_of", "segments"]


@dataclass
class TokenLayout:
    """The token layout of one call after routing: what the decoder and the loss read."""

    embeds: torch.Tensor  # [B, T, D] or [1, N, D] (packed)
    positions: torch.Tensor
    route: TokenRoute
    attend: Attend
    narrow: TokenRoute | None  # the read positions (last layer only), or None
    targets: torch.Tensor | None  # next-token label of each position, in the decoder's layout (or None)


def make_layout(model, embeds, input_ids, attention_mask, labels, position_ids, cu_seqlens, row_types, cache, route,
                logits_to_keep, return_logits, plan: ExecutionPlan) -> TokenLayout:
    device, names = model.device, model.config.adapter_names
    flags = {"touch_all": plan.touch_all, "merged": plan.merged, "fused": plan.fused_lora}
    B, T = input_ids.shape
    targets = None
    if labels is not None:
        targets = next_token_targets(labels.to(device), cu_seqlens)  # the next token's label, per position
    if route is not None:  # a decode step: the precomputed route, no padding, one token per row
        positions = position_ids if position_ids is not None else positions_of(attention_mask, (B, T), cache)
        mask = None if attention_mask is None or bool(attention_mask.all()) else padding_mask(attention_mask, T)
        return TokenLayout(embeds, positions.to(device), route, Attend("padded", mask), None, targets)
    row_adapter = model.router.adapter_index(row_types, device=device)
    if cu_seqlens is not None:  # packed by the caller: rows are already in place
        cu = cu_seqlens.to(device)
        lengths = (cu[1:] - cu[:-1]).tolist()
        positions = position_ids.to(device) if position_ids is not None else \
            torch.cat([torch.arange(n, device=device) for n in lengths])[None]
        token_adapter = row_adapter.repeat_interleave(torch.tensor(lengths, device=device))[None]
        return _packed(model, embeds, positions, token_adapter, cu, lengths, targets, logits_to_keep, return_logits,
                       plan, flags)
    positions = (position_ids if position_ids is not None else positions_of(attention_mask, (B, T), cache))
    positions = positions.to(device).expand(B, T)
    if plan.pack:  # padding-free: the batch's real tokens packed in adapter order
        packed = PackedRows.plan(attention_mask, row_adapter)
        return _packed(model, packed.pack(embeds), packed.pack(positions), packed.token_adapter[None],
                       packed.cu_seqlens, packed.lengths, None if targets is None else packed.pack(targets),
                       logits_to_keep, return_logits, plan, flags)
    real = None if attention_mask is None else attention_mask[:, -T:].bool()
    lora_route = TokenRoute.build(row_adapter, (B, T), names, real, drop_padding=plan.drop_padding, **flags)
    if attention_mask is None or (bool(attention_mask.all()) and (cache is None or cache.get_seq_length() == 0)):
        attend = Attend("padded", None)  # SDPA's own causal mask
    else:
        mask = padding_mask(attention_mask, T)
        groups = LengthGroups.plan(attention_mask) if plan.attention == "length_groups" else None
        attend = Attend("padded", mask) if groups is None else Attend("length_groups", mask, groups)
    used = read_positions(targets, logits_to_keep, return_logits, real, (B, T), device) if plan.narrow else None
    narrow = None if used is None else lora_route.narrowed(used)
    return TokenLayout(embeds, positions, lora_route, attend, narrow, targets)


def _packed(model, embeds, positions, token_adapter, cu, lengths, targets, logits_to_keep, return_logits, plan,
            flags) -> TokenLayout:
    n = embeds.shape[1]
    lora_route = TokenRoute.build(token_adapter, (1, n), model.config.adapter_names, None, **flags)
    attend = Attend("packed", cu_seqlens=cu, lengths=tuple(lengths), backend=plan.packed_backend)
    targets = None if targets is None else targets.reshape(1, n)
    used = read_positions(targets, logits_to_keep, return_logits, None, (1, n), embeds.device) if plan.narrow else None
    narrow = None if used is None else lora_route.narrowed(used)
    return TokenLayout(embeds, positions, lora_route, attend, narrow, targets)


def read_positions(targets, logits_to_keep, return_logits, real, shape, device):
    """[B, T] bool of the positions whose final state is read: the last ``logits_to_keep``, or the
    labelled ones when no logits are returned; None when all are."""
    B, T = shape
    if targets is None and 0 < logits_to_keep < T:
        used = torch.zeros(B, T, dtype=torch.bool, device=device)
        used[:, -logits_to_keep:] = True
    elif targets is not None and not return_logits and not logits_to_keep:
        used = targets != IGNORE_INDEX
    else:
        return None
    return used if real is None else used & real


def logits_and_loss(lm_logits, hidden, layout: TokenLayout, logits_to_keep, return_logits, loss_reduction, plan):
    """(logits, loss) from the decoder's output, in the layout the call ran."""
    targets = layout.targets
    if layout.narrow is not None:  # hidden: [n, D], the read positions in narrow.kept order
        if targets is not None:
            target = targets.reshape(-1)[layout.narrow.kept]
            return None, F.cross_entropy(loss_precision(lm_logits(hidden)), target, reduction=loss_reduction)
        B = layout.route.shape[0]
        in_place = torch.argsort(layout.narrow.kept)  # kept order (by adapter) -> row-major order
        return lm_logits(hidden[in_place]).view(B, logits_to_keep, -1), None
    if plan.packed:  # [1, N, D]; a batch the model packed itself returns no logits (its positions
        # are not the caller's)
        logits = lm_logits(hidden) if return_logits and not plan.pack else None
        if targets is None:
            return logits, None
        keep = targets[0] != IGNORE_INDEX
        return logits, F.cross_entropy(loss_precision(lm_logits(hidden[0][keep])), targets[0][keep],
                                       reduction=loss_reduction)
    if logits_to_keep:
        hidden = hidden[:, -logits_to_keep:]
    if targets is not None and not return_logits:
        keep = targets != IGNORE_INDEX
        return None, F.cross_entropy(loss_precision(lm_logits(hidden[keep])), targets[keep], reduction=loss_reduction)
    logits = lm_logits(hidden)
    loss = None
    if targets is not None:
        flat = loss_precision(logits).reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=loss_reduction)
    return logits, loss


def segments(flat_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    bounds = cu_seqlens.tolist()
    return [flat_ids[s:e] for s, e in zip(bounds[:-1], bounds[1:])]


def positions_of(attention_mask, shape, cache) -> torch.Tensor:
    """Rotary positions: a left-padded row gets the positions it has alone (real tokens counted)."""
    past = cache.get_seq_length() if cache is not None else 0
    if attention_mask is None:
        return torch.arange(past, past + shape[1]).unsqueeze(0).expand(shape[0], -1)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)[:, -shape[1]:]
