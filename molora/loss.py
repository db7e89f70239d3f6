"""Next-token losses and the precision they are computed in."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def loss_precision(logits: torch.Tensor) -> torch.Tensor:
    """Logits for a cross-entropy or log-softmax: half precision is raised to float32; float32 and
    float64 stay as they are (a float64 check then computes in float64 end to end)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                   reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over the labelled tokens (mean: transformers' convention)."""
    shift_logits = loss_precision(logits[:, :-1])
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=ignore_index, reduction=reduction)
