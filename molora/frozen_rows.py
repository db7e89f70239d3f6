"""Rows whose loss no trainable weight can change: run them without autograd.

In a mixed training batch a text-only row has no LoRA (the router gives it none) and no media, so
when the backbone is frozen its loss does not depend on any weight that trains: its share of the
backward pass (every linear's input gradient, attention backward, over all its tokens) is work
whose result is thrown away. The reference stack never pays it (it runs a text-only group with the
adapters disabled, and that loss needs no backward); molora's single pass would. ``frozen_text_rows``
finds such rows; when the execution plan says ``split_frozen_rows``, ``MoLoRAModel.forward`` hands
the call to ``loss_apart``, which runs them through the plain forward under ``torch.no_grad()`` and
the others with autograd, and adds the two summed losses (divided by the batch's labelled-token
count for "mean"): the same loss and the same gradients as one pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .loss import count_label_tokens

__all__ = ["frozen_text_rows", "row_subset", "backbone_frozen", "loss_apart"]

_ROW_KEYS = ("input_ids", "attention_mask", "labels")


def backbone_frozen(model) -> bool:
    lm_head = [] if model.lm_head is None else list(model.lm_head.parameters())
    return not any(p.requires_grad for n, p in model.language_model.named_parameters()
                   if ".lora_A." not in n and ".lora_B." not in n) and not any(p.requires_grad for p in lm_head)


def frozen_text_rows(model, input_ids: torch.Tensor, row_types: list[str],
                     cu_seqlens: torch.Tensor | None = None) -> tuple[list[int], list[int]] | None:
    """(text-only rows without an adapter, the other rows), or None when there is nothing to split
    (no such row, or only such rows). Whether the backbone is frozen is the caller's check."""
    config = model.config
    media = torch.zeros_like(input_ids, dtype=torch.bool)
    for entry in config.modality_entries():  # placeholders of every modality of the model
        media |= input_ids == entry.token_id(config)
    if cu_seqlens is None:
        has_media = media.any(-1).tolist()
    else:
        row = torch.searchsorted(cu_seqlens.to(input_ids.device), torch.arange(input_ids.shape[1],
                                 device=input_ids.device), right=True) - 1
        has_media = torch.zeros(len(row_types), dtype=torch.bool).index_put_(
            (row[media[0]].cpu(),), torch.tensor(True), accumulate=False).tolist()
    frozen = [i for i, t in enumerate(row_types) if model.router.adapter(t) is None and not has_media[i]]
    if not frozen or len(frozen) == len(row_types):
        return None
    keep = set(frozen)
    return frozen, [i for i in range(len(row_types)) if i not in keep]


def row_subset(batch: dict, rows: list[int], *, with_media: bool) -> dict:
    """The rows of a padded batch (``input_ids`` / ``attention_mask`` / ``labels``, without the
    columns that are padding in every one of them) or of a packed one (``cu_seqlens``: their
    segments, concatenated). Media tensors are flat over the batch's rows and belong to the
    non-frozen rows only, so they go whole (or not at all)."""
    if batch.get("cu_seqlens") is not None:
        cu = batch["cu_seqlens"].tolist()
        out = {}
        for k in ("input_ids", "labels", "position_ids"):
            if batch.get(k) is not None:
                out[k] = torch.cat([batch[k][:, cu[r]:cu[r + 1]] for r in rows], 1)
        out["cu_seqlens"] = F.pad(torch.tensor([cu[r + 1] - cu[r] for r in rows]).cumsum(0), (1, 0))
    else:
        idx = torch.tensor(rows, device=batch["input_ids"].device)
        out = {k: batch[k].index_select(0, idx.to(batch[k].device)) for k in _ROW_KEYS}
        cols = out["attention_mask"].bool().any(0)
        if not bool(cols.all()):  # a row's tokens are contiguous, so these columns sit at the edges
            out = {k: v[:, cols.to(v.device)] for k, v in out.items()}
    if with_media:
        out.update({k: v for k, v in batch.items()
                    if k not in (*_ROW_KEYS, "cu_seqlens", "position_ids") and v is not None})
    return out


def loss_apart(model, call, media: dict, rows: tuple[list[int], list[int]]) -> torch.Tensor:
    """The loss of a training call (``ForwardCall``) whose ``rows`` are (frozen text rows, the
    others): the frozen ones through ``model`` without autograd, the others with it, each part a
    plain forward of its own (neither splits again: the first runs without grad, the second holds
    no frozen text row); the same value and gradients as one pass."""
    frozen, rest = rows
    mask = call.attention_mask
    if call.cu_seqlens is None and mask is None:
        mask = torch.ones_like(call.input_ids)
    batch = {"input_ids": call.input_ids, "attention_mask": mask, "labels": call.labels,
             "cu_seqlens": call.cu_seqlens, "position_ids": call.position_ids, **media}
    with torch.no_grad():
        fixed = model(**row_subset(batch, frozen, with_media=False), row_types=[call.row_types[i] for i in frozen],
                      return_logits=False, loss_reduction="sum").loss
    loss = model(**row_subset(batch, rest, with_media=True), row_types=[call.row_types[i] for i in rest],
                 return_logits=False, loss_reduction="sum").loss + fixed
    if call.loss_reduction == "mean":
        loss = loss / count_label_tokens(call.labels, call.cu_seqlens).to(loss.device)
    return loss
