"""The inputs of one ``MoLoRAModel.forward`` call, on the model's device, and the facts its plan reads.

``ForwardCall`` carries what every step after the embedding needs (the token ids, the mask, the
labels, the cache, what is read back) so the steps take one argument instead of a dozen.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .adapters.route import TokenRoute
from .plan import BatchFacts

__all__ = ["ForwardCall"]


@dataclass
class ForwardCall:
    input_ids: torch.Tensor  # [B, T], or [1, N] packed by the caller (``cu_seqlens``)
    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None
    position_ids: torch.Tensor | None
    cu_seqlens: torch.Tensor | None
    row_types: list[str]
    cache: object | None  # the KV cache the caller gave (None: none)
    use_cache: bool
    route: TokenRoute | None  # a decode step's precomputed route
    logits_to_keep: int
    return_logits: bool
    loss_reduction: str  # mean | sum

    def __post_init__(self):
        if self.loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {self.loss_reduction!r}")
        # the cache the decoder fills: the caller's, or a new one when one is asked for
        self.decoder_cache = DynamicCache() if self.use_cache and self.cache is None else self.cache

    @classmethod
    def of(cls, model, input_ids, attention_mask=None, *, row_types=None, cu_seqlens=None, cache=None,
           past_key_values=None, **rest) -> "ForwardCall":
        """The call's token ids and mask moved to ``model``'s device; row types read off the ids
        when not given; the cache under either of its names."""
        input_ids = input_ids.to(model.device)
        mask = None if attention_mask is None else attention_mask.to(model.device)
        row_types = model.row_types(input_ids, cu_seqlens) if row_types is None else row_types
        cache = cache if cache is not None else past_key_values
        return cls(input_ids, mask, cu_seqlens=cu_seqlens, row_types=row_types, cache=cache, **rest)

    @property
    def prefill(self) -> bool:
        """No cache yet (or an empty one): the call embeds media; a decode step carries new text tokens only."""
        return self.cache is None or self.cache.get_seq_length() == 0

    @property
    def training_loss(self) -> bool:
        """Labels, the loss only (no logits), no cache, no precomputed route: the trainer's call."""
        return self.labels is not None and not self.return_logits and not self.logits_to_keep \
            and self.cache is None and self.route is None

    @property
    def returned_cache(self):
        return self.decoder_cache if self.use_cache else None

    def facts(self, frozen_rows_possible: bool) -> BatchFacts:
        mask, ids = self.attention_mask, self.input_ids
        padded = mask is not None and mask.shape == ids.shape and not bool(mask.all())
        last_logits_only = self.labels is None and 0 < self.logits_to_keep < ids.shape[1]
        return BatchFacts(
            packed_input=self.cu_seqlens is not None, padded=padded, training_loss=self.training_loss,
            reads_subset=self.route is None and (last_logits_only or self.training_loss), prefill=self.prefill,
            seq_len=int(ids.shape[1]), grad=torch.is_grad_enabled(), frozen_rows_possible=frozen_rows_possible)
