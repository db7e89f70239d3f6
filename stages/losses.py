"""The stages' losses: token-summed LM loss and DPO, what each is summed over, and DPO's settings."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from molora.loss import IGNORE_INDEX, count_label_tokens, loss_precision, next_token_targets

TEXT_KEYS = ("input_ids", "attention_mask", "position_ids", "cu_seqlens")


def model_keys(config) -> tuple[str, ...]:
    """The batch keys the model takes: the text keys, then each of its modalities' (``Modality.input_keys``)."""
    return TEXT_KEYS + tuple(k for m in config.modality_entries() for k in m.input_keys)


def model_inputs(batch: dict, config) -> dict:
    return {k: batch[k] for k in model_keys(config) if k in batch}


def label_count(batch: dict) -> int:
    """Labelled next tokens of a padded or a packed batch."""
    return int(count_label_tokens(batch["labels"], batch.get("cu_seqlens")))


def pair_count(batch: dict) -> int:
    return int(batch["chosen"]["input_ids"].shape[0])


def lm_loss_sum(model, batch: dict, forward=None) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropy over labelled tokens, so the trainer can divide
    by the token count of the whole global batch (all micro-batches, all processes)."""
    out = (forward or model)(**model_inputs(batch, model.config), labels=batch["labels"], return_logits=False,
                             loss_reduction="sum")
    return out.loss


def lm_loss(model, batch, ctx):
    return lm_loss_sum(model, batch), {}


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row sum of log p(label) over labelled tokens: [B]."""
    lp = loss_precision(logits[:, :-1]).log_softmax(-1)  # the positions that have a next token
    tgt = next_token_targets(labels)[:, :-1]
    mask = tgt != IGNORE_INDEX
    picked = lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def _logps(model, b):
    logits = model(**model_inputs(b, model.config)).logits
    return sequence_logps(logits, b["labels"].to(logits.device))


def pair_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed reply log-probabilities [B] of the chosen and the rejected replies of a preference batch."""
    return _logps(model, batch["chosen"]), _logps(model, batch["rejected"])


@contextmanager
def weights_swapped(model, values: dict[str, torch.Tensor]) -> Iterator[None]:
    """The model's parameters named in ``values`` hold those values inside the block (copied in place,
    without gradient) and their own again after it. Sharded (FSDP2), each process swaps its own shards and
    the units are resharded around the block, so every forward gathers what is in place; the block must
    not be a forward whose graph is kept for a backward after it."""
    from .sharding import reshard

    reshard(model)  # before reading the parameters: a gathered unit's are freed by the reshard
    named = dict(model.named_parameters())
    own = {}
    with torch.no_grad():
        for k, v in values.items():
            own[k] = named[k].detach().clone()
            named[k].copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            reshard(model)
            for k, v in own.items():
                named[k].copy_(v)


@dataclass(frozen=True)
class DPOSettings:
    """The DPO stage's own recipe section (``dpo:``; ``dpo.beta=0.2`` on the command line)."""

    beta: float = 0.1  # scale of the reward margin: larger punishes drifting from the reference more

    def out_of_range(self) -> Iterator[tuple[str, str]]:
        """(field, what it must be) for each value of the right type but out of range."""
        if not self.beta > 0:
            yield "beta", "> 0"


def dpo_loss(model, batch, ctx):
    """Direct preference optimisation on chosen / rejected pairs against a frozen reference (the
    trainable tensors as they were when the stage started):
    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), pi / ref the summed
    log-probabilities of the reply tokens. Logged: the reward margin (beta times the bracket), the
    share of pairs whose margin is positive, and each side's reward."""
    beta = ctx.recipe.settings.beta
    with torch.no_grad(), weights_swapped(model, ctx.reference_params):  # first: the policy's pass keeps its
        rc, rr = pair_logps(model, batch)  # parameters for backward, so they are not touched after it
    pc, pr = pair_logps(model, batch)
    margin = beta * ((pc - rc) - (pr - rr))
    losses = -F.logsigmoid(margin)
    m = margin.detach()
    return losses.sum(), {"reward_margin": float(m.mean()), "reward_accuracy": float((m > 0).float().mean()),
                          "chosen_reward": float((beta * (pc - rc)).detach().mean()),
                          "rejected_reward": float((beta * (pr - rr)).detach().mean())}
