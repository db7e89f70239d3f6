"""molora/pretraining: the one loop every pretraining phase runs takes, on the stages' optimiser and
schedule, the very steps of the hand-written loop the shipped tiny weights were made with."""
from __future__ import annotations

import math

import torch

from molora.pretraining import run_phase, settings


def _script_loop(params, lr, steps, loss_of, warm=20):
    """The loop scripts/pretrain_tiny.py had before it moved onto the stages' parts (its ``_optim``,
    ``cosine`` and ``_update``), written out."""
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0, foreach=False)
    for step in range(steps):
        if step < warm:
            f = (step + 1) / warm
        else:
            f = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))
        for g in opt.param_groups:
            g["lr"] = lr * f
        loss = loss_of(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def _toy(seed):
    torch.manual_seed(seed)
    enc, head = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))

    def loss_of(step):  # large enough that most steps are clipped
        return 20 * torch.nn.functional.cross_entropy(head(torch.tanh(enc(x[step % 4::4]))), y[step % 4::4])

    return enc, head, loss_of


def test_run_phase_takes_the_script_loops_steps_bit_for_bit():
    steps = 80  # the stages' schedule caps warmup at a quarter of the steps: from 80 steps on, 20 as the script's
    enc, head, loss_of = _toy(0)
    named = [(f"audio_embed.encoder.{n}", p) for n, p in enc.named_parameters()]  # lr group "encoder"
    named += [(f"head.{n}", p) for n, p in head.named_parameters()]  # "other"
    losses: list = []
    run_phase(named, settings(3e-2), steps, loss_of, losses, "toy", 1000)
    ref_enc, ref_head, ref_loss_of = _toy(0)
    _script_loop(list(ref_enc.parameters()) + list(ref_head.parameters()), 3e-2, steps, ref_loss_of)
    assert len(losses) == steps and losses[-1] < losses[0]
    ours, script = [*enc.parameters(), *head.parameters()], [*ref_enc.parameters(), *ref_head.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(ours, script))


def test_the_through_lm_groups_keep_their_own_rates():
    """``settings(lr, lr_groups)``: each learning-rate group starts its warmup at its own rate."""
    from molora.pretraining import lm_phase_lrs
    from molora.stages.optim import build_optimizer, build_scheduler

    enc, head, _ = _toy(1)
    named = [(f"image_embed.img_processor.{n}", p) for n, p in enc.named_parameters()]
    named += [(f"language_model.layers.0.mlp.{n}", p) for n, p in head.named_parameters()]
    lrs = lm_phase_lrs(encoder=3e-4)
    t = settings(lrs["other"], lrs)
    opt = build_optimizer(named, t)
    build_scheduler(opt, t, 100)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {"encoder": 3e-4 / 20, "other": 1e-3 / 20}
    assert all(g["betas"] == (0.9, 0.98) and g["weight_decay"] == 0.0 for g in opt.param_groups)
