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


def pair_logps(model, batch, params=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed reply log-probabilities [B] of the chosen and the rejected replies of a preference batch
    (``params``: other values for some of the model's parameters, e.g. the DPO reference)."""
    return _logps(model, batch["chosen"], params), _logps(model, batch["rejected"], params)


def loss(model, batch, ctx):
    beta = float(ctx.recipe.dpo.get("beta", 0.1))
    pc, pr = pair_logps(model, batch)
    with torch.no_grad():
        rc, rr = pair_logps(model, batch, ctx.reference_params)
    margin = beta * ((pc - rc) - (pr - rr))
    losses = -F.logsigmoid(margin)
    m = margin.detach()
    return losses.sum(), {"reward_margin": float(m.mean()), "reward_accuracy": float((m > 0).float().mean()),
                          "chosen_reward": float((beta * (pc - rc)).detach().mean()),
                          "rejected_reward": float((beta * (pr - rr)).detach().mean())}
