"""The language-model loss: next-token targets, the cross-entropy, the precision it is computed in.

``IGNORE_INDEX`` is the label of a position that carries no loss (prompt, padding, media slots):
the processor writes it, the collator and the stages count around it, the model's loss skips it
(``torch.nn.functional.cross_entropy``'s default ``ignore_index``). ``next_token_targets`` is the
one label shift: position t is scored on the label of position t + 1; ``next_token_loss`` is the
one cross-entropy every token layout of ``MoLoRAModel`` scores it with (``molora/token_layout.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "next_token_targets", "count_label_tokens", "loss_precision", "next_token_loss"]

IGNORE_INDEX = -100


def next_token_targets(labels: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """``labels`` [B, T] -> the target of every position [B, T]: the next position's label, and
    ``IGNORE_INDEX`` at the last position. For a packed sequence (``labels`` [1, N], ``cu_seqlens``
    [rows + 1]) each row's last position is unlabelled too: a row never predicts the next row's
    first token."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if cu_seqlens is not None:
        targets[0, cu_seqlens[1:].to(targets.device) - 1] = IGNORE_INDEX
    return targets


def count_label_tokens(labels: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """The positions that carry loss (a labelled next token), int64 scalar."""
    return (next_token_targets(labels, cu_seqlens) != IGNORE_INDEX).sum()


def loss_precision(logits: torch.Tensor) -> torch.Tensor:
    """Logits for a cross-entropy or log-softmax: half precision is raised to float32; float32 and
    float64 stay as they are (a float64 check then computes in float64 end to end)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits`` [..., V] against ``targets`` [...] (from ``next_token_targets``),
    in ``loss_precision``; positions whose target is ``IGNORE_INDEX`` add nothing. ``reduction``:
    "mean" over the scored positions, "sum", or "none" (one value per position, flattened)."""
    flat = loss_precision(logits).reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction)
