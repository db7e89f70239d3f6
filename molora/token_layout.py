"""The route step of a forward: from the execution plan to the token layout the decoder runs on.

A token layout is what the decoder and the loss read for one call: the positions, the attention
kernel and its inputs (``Attend``), the LoRA ``TokenRoute`` of every token, the narrower route of
the positions whose output is read (for the last layer), and the next-token target of every
position. There are three, each a small type that builds itself and turns the decoder's output
into logits and the loss (``molora/loss.py``):

- ``PaddedLayout``: a ``[B, T]`` batch, padding and all (the plain path, ``FastPaths.off()``);
- ``PackedLayout``: rows packed into one ``[1, N]`` sequence, by the caller (``cu_seqlens``) or by
  the model itself when the plan says ``pack`` (``molora/packing.py``);
- ``DecodeLayout``: a decode step with its precomputed route, one new token per row.

``make_layout`` picks the one the call needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters.route import TokenRoute
from .attention import FLEX_BACKENDS, LengthGroups, document_block_mask, padding_mask
from .decoder import Attend
from .loss import IGNORE_INDEX, next_token_loss, next_token_targets
from .packing import PackedRows
from .plan import ExecutionPlan

__all__ = ["TokenLayout", "PaddedLayout", "PackedLayout", "DecodeLayout", "make_layout", "positions_of",
           "segments"]


@dataclass
class TokenLayout:
    """The token layout of one call after routing: what the decoder and the loss read."""

    embeds: torch.Tensor  # [B, T, D] or [1, N, D] (packed)
    positions: torch.Tensor
    route: TokenRoute
    attend: Attend
    narrow: TokenRoute | None  # the read positions (last layer only), or None
    targets: torch.Tensor | None  # next-token label of each position, in the decoder's layout (or None)

    def logits_and_loss(self, lm_logits, hidden: torch.Tensor, call) -> tuple:
        """(logits, loss) from the decoder's output ``hidden``."""
        if self.narrow is None:
            return self.all_logits_and_loss(lm_logits, hidden, call)
        # hidden: [n, D], the read positions in narrow.kept order
        if self.targets is not None:
            target = self.targets.reshape(-1)[self.narrow.kept]
            return None, next_token_loss(lm_logits(hidden), target, call.loss_reduction)
        in_place = torch.argsort(self.narrow.kept)  # kept order (by adapter) -> row-major order
        return lm_logits(hidden[in_place]).view(self.route.shape[0], call.logits_to_keep, -1), None

    def all_logits_and_loss(self, lm_logits, hidden: torch.Tensor, call) -> tuple:
        """(logits, loss) when the decoder computed every position: [B, T, D]."""
        if call.logits_to_keep:
            hidden = hidden[:, -call.logits_to_keep:]
        targets = self.targets
        if targets is not None and not call.return_logits:  # logits of the labelled positions only
            keep = targets != IGNORE_INDEX
            return None, next_token_loss(lm_logits(hidden[keep]), targets[keep], call.loss_reduction)
        logits = lm_logits(hidden)
        return logits, None if targets is None else next_token_loss(logits, targets, call.loss_reduction)

    def visible_hidden(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The final hidden states as the caller's ``[B, T, D]``; None when only some were computed."""
        return hidden if self.narrow is None else None


def _route_flags(plan: ExecutionPlan) -> dict:
    return {"touch_all": plan.touch_all, "merged": plan.merged, "fused": plan.fused_lora}


def _narrow(route: TokenRoute, targets, call, real, plan: ExecutionPlan) -> TokenRoute | None:
    """The route of the positions whose final state is read (the last ``logits_to_keep``, or the
    labelled ones when no logits are returned); None when every position is read or ``narrow`` is off."""
    B, T = route.shape
    if not plan.narrow:
        return None
    if targets is None and 0 < call.logits_to_keep < T:
        used = torch.zeros(B, T, dtype=torch.bool, device=call.input_ids.device)
        used[:, -call.logits_to_keep:] = True
    elif targets is not None and not call.return_logits and not call.logits_to_keep:
        used = targets != IGNORE_INDEX
    else:
        return None
    return route.narrowed(used if real is None else used & real)


def _given_or_padded_positions(call) -> torch.Tensor:
    """The caller's ``position_ids``, else each row's own positions after the cache's (``positions_of``)."""
    if call.position_ids is not None:
        return call.position_ids
    return positions_of(call.attention_mask, call.input_ids.shape, call.decoder_cache)


class PaddedLayout(TokenLayout):
    """A ``[B, T]`` batch as it came: padding slots stay in place (dropped from the linears, norms and
    MLPs when the plan says ``drop_padding``)."""

    @classmethod
    def build(cls, model, embeds, call, plan: ExecutionPlan, row_adapter, targets) -> "PaddedLayout":
        B, T = call.input_ids.shape
        mask = call.attention_mask
        positions = _given_or_padded_positions(call)
        real = None if mask is None else mask[:, -T:].bool()
        route = TokenRoute.build(row_adapter, (B, T), model.config.adapter_names, real,
                                 drop_padding=plan.drop_padding, **_route_flags(plan))
        if mask is None or (bool(mask.all()) and call.prefill):
            attend = Attend("padded", None)  # SDPA's own causal mask
        else:  # length groups where the plan asks for them and grouping saves enough (else None)
            groups = LengthGroups.plan(mask) if plan.attention == "length_groups" else None
            attend = Attend("padded" if groups is None else "length_groups", padding_mask(mask, T), groups)
        return cls(embeds, positions.to(model.device).expand(B, T), route, attend,
                   _narrow(route, targets, call, real, plan), targets)


class DecodeLayout(PaddedLayout):
    """A decode step: the precomputed route (``MoLoRAModel.step_route``), one new token per row, the
    cache's positions."""

    @classmethod
    def build(cls, model, embeds, call, plan: ExecutionPlan, row_adapter, targets) -> "DecodeLayout":
        B, T = call.input_ids.shape
        mask = call.attention_mask
        positions = _given_or_padded_positions(call)
        padded = None if mask is None or bool(mask.all()) else padding_mask(mask, T)
        return cls(embeds, positions.to(model.device), call.route, Attend("padded", padded), None, targets)


@dataclass
class PackedLayout(TokenLayout):
    """Rows packed into one ``[1, N]`` sequence, attention inside each row (``molora/packing.py``)."""

    repacked: bool = False  # the model packed a padded batch itself: its positions are not the caller's

    @classmethod
    def build(cls, model, embeds, positions, token_adapter, cu, lengths, targets, call, plan: ExecutionPlan,
              repacked: bool) -> "PackedLayout":
        n = embeds.shape[1]
        route = TokenRoute.build(token_adapter, (1, n), model.config.adapter_names, None, **_route_flags(plan))
        flex = plan.packed_backend in FLEX_BACKENDS  # one block mask for every layer of the call
        attend = Attend("packed", cu_seqlens=cu, lengths=tuple(lengths), backend=plan.packed_backend,
                        block_mask=document_block_mask(cu.to(embeds.device), n) if flex else None)
        targets = None if targets is None else targets.reshape(1, n)
        return cls(embeds, positions, route, attend, _narrow(route, targets, call, None, plan), targets, repacked)

    @classmethod
    def from_caller(cls, model, embeds, call, plan: ExecutionPlan, row_adapter, targets) -> "PackedLayout":
        """A batch the caller packed (``cu_seqlens``): rows are already in place."""
        device = model.device
        cu = call.cu_seqlens.to(device)
        lengths = (cu[1:] - cu[:-1]).tolist()
        positions = call.position_ids.to(device) if call.position_ids is not None else \
            torch.cat([torch.arange(n, device=device) for n in lengths])[None]
        token_adapter = row_adapter.repeat_interleave(torch.tensor(lengths, device=device))[None]
        return cls.build(model, embeds, positions, token_adapter, cu, lengths, targets, call, plan, repacked=False)

    @classmethod
    def from_padded(cls, model, embeds, call, plan: ExecutionPlan, row_adapter, targets) -> "PackedLayout":
        """A padded batch's real tokens packed in adapter order (``fast_paths.pack``)."""
        B, T = call.input_ids.shape
        positions = _given_or_padded_positions(call)
        packed = PackedRows.plan(call.attention_mask, row_adapter)
        return cls.build(model, packed.pack(embeds), packed.pack(positions.to(model.device).expand(B, T)),
                         packed.token_adapter[None], packed.cu_seqlens, packed.lengths,
                         None if targets is None else packed.pack(targets), call, plan, repacked=True)

    def all_logits_and_loss(self, lm_logits, hidden: torch.Tensor, call) -> tuple:
        """hidden [1, N, D]; a batch the model packed itself returns no logits."""
        logits = lm_logits(hidden) if call.return_logits and not self.repacked else None
        if self.targets is None:
            return logits, None
        keep = self.targets[0] != IGNORE_INDEX
        return logits, next_token_loss(lm_logits(hidden[0][keep]), self.targets[0][keep], call.loss_reduction)

    def visible_hidden(self, hidden: torch.Tensor) -> None:
        return None


def make_layout(model, embeds: torch.Tensor, call, plan: ExecutionPlan) -> TokenLayout:
    """The layout of ``call``: a decode step's, a packed batch's (packed by the caller, or by the model
    when the plan says ``pack``), or the padded batch's."""
    targets = None if call.labels is None else next_token_targets(call.labels.to(model.device), call.cu_seqlens)
    if call.route is not None:
        kind = DecodeLayout.build
    elif call.cu_seqlens is not None:
        kind = PackedLayout.from_caller
    elif plan.pack:
        kind = PackedLayout.from_padded
    else:
        kind = PaddedLayout.build
    row_adapter = None if call.route is not None else model.router.adapter_index(call.row_types, device=model.device)
    return kind(model, embeds, call, plan, row_adapter, targets)


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
