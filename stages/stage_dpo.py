"""Direct preference optimisation on chosen / rejected pairs against a frozen reference: the
model with the adapters (and every trainable part) as they were when the stage started.

loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), with pi / ref the summed
log-probabilities of the reply tokens. Logged: reward margin (beta times the bracket) and the
share of pairs whose margin is positive.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .losses import model_inputs, sequence_logps

DATA_KINDS = ("preference",)
PAIRED = True


def default_substeps() -> list[dict]:
    return [{"name": "dpo", "train": ["vision_lora", "speech_lora", "vision_projector", "speech_projector",
                                      "vision_speech_projector"], "fraction": 1.0}]


def batch_count(batch) -> int:
    return int(batch["chosen"]["input_ids"].shape[0])


def _logps(model, b, params=None):
    inputs = model_inputs(b)
    if params is None:
        logits = model(**inputs).logits
    else:
        logits = functional_call(model, params, args=(), kwargs=inputs, strict=False)
        logits = logits.logits
    return sequence_logps(logits, b["labels"].to(logits.device))


def loss(model, batch, ctx):
    beta = float(ctx.recipe.dpo.get("beta", 0.1))
    pc, pr = _logps(model, batch["chosen"]), _logps(model, batch["rejected"])
    with torch.no_grad():
        rc = _logps(model, batch["chosen"], ctx.reference_params)
        rr = _logps(model, batch["rejected"], ctx.reference_params)
    margin = beta * ((pc - rc) - (pr - rr))
    losses = -F.logsigmoid(margin)
    m = margin.detach()
    return losses.sum(), {"reward_margin": float(m.mean()), "reward_accuracy": float((m > 0).float().mean()),
                          "chosen_reward": float((beta * (pc - rc)).detach().mean()),
                          "rejected_reward": float((beta * (pr - rr)).detach().mean())}
