"""The text phases: the backbone alone as a causal LM on the corpora's text (``lm``: every token
labelled), or on the look-up drills (``lookup``: loss on the answers only)."""
from __future__ import annotations

import random

from molora.loss import IGNORE_INDEX

from .loop import run_phase, settings, train_only


def pretrain_text(model, processor, convs, steps: int, batch: int, lr: float, rng: random.Random, losses: list,
                  tag: str = "lm", answers_only: bool = False, warm: int = 20, every: int = 100) -> None:
    """Train the backbone alone on text conversations. Phase 1 (``lm``): every token labelled.
    Phase 1b (``lookup``, ``answers_only``): the look-up drills (``molora/synthetic/lookup.py``:
    page-as-text questions, key-value recall, repeat-the-text), loss on the answers only."""
    named = train_only(model, [], backbone=True)
    model.train()

    def step_loss(step: int):
        rows = [convs[rng.randrange(len(convs))] for _ in range(batch)]
        if answers_only:
            return model(**processor(rows, return_labels=True), return_logits=False).loss
        b = processor(rows, add_generation_prompt=False)
        labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, IGNORE_INDEX)
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels).loss

    run_phase(named, settings(lr, warmup=warm), steps, step_loss, losses, tag, every)
