"""Vision training: projector alignment -> encoder + projector -> vision LoRA + encoder + projector."""
from __future__ import annotations

from .losses import label_count, lm_loss_sum

DATA_KINDS = ("vqa", "chat")


def default_substeps() -> list[dict]:
    return [
        {"name": "projector_alignment", "train": ["vision_projector"], "fraction": 0.2},
        {"name": "encoder_projector", "train": ["vision_encoder", "vision_projector"], "fraction": 0.3},
        {"name": "vision_lora", "train": ["vision_lora", "vision_encoder", "vision_projector"], "fraction": 0.5},
    ]


def batch_count(batch) -> int:
    return label_count(batch)


def loss(model, batch, ctx):
    return lm_loss_sum(model, batch), {}
