"""Loss pieces shared by the stages: token-summed LM loss and sequence log-probabilities."""
from __future__ import annotations

import torch

from molora.loss import loss_precision

MODEL_KEYS = ("input_ids", "attention_mask", "image_pixel_values", "image_sizes", "image_attention_mask",
              "audio_input_features", "audio_embed_sizes", "audio_attention_mask")


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


def label_count(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def lm_loss_sum(model, batch: dict, forward=None) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropy over labelled tokens, so the trainer can divide
    by the token count of the whole global batch (all micro-batches, all processes)."""
    out = (forward or model)(**model_inputs(batch), labels=batch["labels"], return_logits=False,
                             loss_reduction="sum")
    return out.loss


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row sum of log p(label) over labelled tokens: [B]."""
    lp = loss_precision(logits[:, :-1]).log_softmax(-1)
    tgt = labels[:, 1:]
    mask = tgt != -100
    picked = lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)
