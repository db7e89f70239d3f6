"""Speech training: pre-training (audio encoder + speech projector, LM frozen) -> post-training
(speech projector + speech LoRA, encoder frozen)."""
from __future__ import annotations

from .losses import label_count, lm_loss_sum

DATA_KINDS = ("asr", "chat")


def default_substeps() -> list[dict]:
    return [
        {"name": "pretraining", "train": ["audio_encoder", "speech_projector"], "fraction": 0.5},
        {"name": "post_training", "train": ["speech_projector", "speech_lora"], "fraction": 0.5},
    ]


def batch_count(batch) -> int:
    return label_count(batch)


def loss(model, batch, ctx):
    return lm_loss_sum(model, batch), {}
