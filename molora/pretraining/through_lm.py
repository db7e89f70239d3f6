"""The phases through the LM: encoders learn to talk to the backbone through temporary projectors and
LoRAs (thrown away at the end), next-token loss on the answers; the backbone trains too unless frozen."""
from __future__ import annotations

import random

from molora.stages.collate import Collator
from molora.stages.losses import label_count, lm_loss_sum

from .loop import run_phase, settings, train_only


def lm_phase_lrs(encoder: float) -> dict[str, float]:
    """Learning rates of the through-the-LM phases by learning-rate group: only the encoder's differs
    between phases ("other" = the backbone, when it trains)."""
    return {"encoder": encoder, "projector": 3e-3, "lora": 3e-3, "other": 1e-3}


def through_lm(model, processor, samples, components, steps: int, batch: int, lrs: dict, rng: random.Random,
               losses: list, tag: str, train_lm: bool = False) -> None:
    """Train ``components`` through the LM on ``samples`` (next-token loss on the answers); the LM's
    own weights stay frozen unless ``train_lm`` (lr group "other")."""
    named = train_only(model, components, backbone=train_lm)
    collate = Collator(processor)
    model.train()

    def step_loss(step: int):
        b = collate([samples[rng.randrange(len(samples))] for _ in range(batch)])
        return lm_loss_sum(model, b) / max(label_count(b), 1)

    run_phase(named, settings(lrs["other"], lrs), steps, step_loss, losses, tag, 50)
