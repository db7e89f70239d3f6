"""Mixed-modality instruction tuning of the routed adapters and the projectors."""
from __future__ import annotations

from .losses import label_count, lm_loss_sum

DATA_KINDS = ("chat", "vqa", "asr")


def default_substeps() -> list[dict]:
    return [{"name": "sft", "train": ["vision_lora", "speech_lora", "vision_projector", "speech_projector",
                                      "vision_speech_projector"], "fraction": 1.0}]


def batch_count(batch) -> int:
    return label_count(batch)


def loss(model, batch, ctx):
    return lm_loss_sum(model, batch), {}
