"""Vision-speech joint training: LM, audio encoder and speech projector frozen; vision encoder,
vision projector, vision LoRA and the vision-speech audio projector trained."""
from __future__ import annotations

from .losses import label_count, lm_loss_sum

DATA_KINDS = ("chat", "vqa", "asr")


def default_substeps() -> list[dict]:
    return [{"name": "vision_speech", "train": ["vision_encoder", "vision_projector", "vision_lora",
                                                "vision_speech_projector"], "fraction": 1.0}]


def batch_count(batch) -> int:
    return label_count(batch)


def loss(model, batch, ctx):
    return lm_loss_sum(model, batch), {}
