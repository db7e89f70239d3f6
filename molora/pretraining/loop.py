"""The one training loop every pretraining phase runs, on the stages' parts: AdamW from
``stages/optim.py`` (``build_optimizer``), its warmup + cosine schedule (``build_scheduler``), the
freeze plans of ``stages/freeze.py``; gradients clipped at ``max_grad_norm`` by torch's
``clip_grad_norm_`` (the shipped weights were made with it; the trainer's ``clip_gradients`` sums the
norm in float64 and would round each clipped step differently)."""
from __future__ import annotations

import time
from typing import Callable, Iterable

import torch

from molora.stages.freeze import apply_plan, component_of
from molora.stages.optim import build_optimizer, build_scheduler, lr_group
from molora.stages.recipe import Training

BETAS = (0.9, 0.98)  # the pretraining's AdamW (the stages' default is (0.9, 0.95))


def log(msg: str) -> None:
    print(f"[pretrain {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def settings(lr: float, lr_groups: dict[str, float] | None = None, warmup: int = 20) -> Training:
    """A phase's optimiser and schedule: AdamW (``BETAS``, no weight decay) at ``lr`` (``lr_groups``: per
    learning-rate group), ``warmup`` linear steps, then cosine down to 5 % of it; clipped at norm 1."""
    return Training(lr=lr, lr_groups=dict(lr_groups or {}), weight_decay=0.0, betas=BETAS, warmup_steps=warmup,
                    schedule="cosine", min_lr_ratio=0.05, max_grad_norm=1.0)


def train_only(model, parts: list[str], backbone: bool = False) -> list[tuple[str, torch.nn.Parameter]]:
    """Freeze every parameter of ``model`` but those of the components ``parts`` (``stages/freeze.py``) and,
    with ``backbone``, the backbone's ("llm": no molora stage trains it, the pretraining does); returns the
    trainable (name, parameter) pairs in the model's order."""
    apply_plan(model, parts)
    if backbone:
        for n, p in model.named_parameters():
            if component_of(n) == "llm":
                p.requires_grad_(True)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def run_phase(named: Iterable[tuple[str, torch.nn.Parameter]], training: Training, steps: int,
              step_loss: Callable[[int], torch.Tensor], losses: list, tag: str, every: int,
              note: Callable[[], str] | None = None) -> None:
    """``steps`` optimiser steps on the parameters ``named`` ((name, parameter) pairs: a model's and a
    throw-away head's): ``step_loss(step)`` gives the step's loss, whose value is appended to ``losses``.
    Logs ``TAG step i/steps loss x`` (plus ``note()``) every ``every`` steps and on the last. The gradient
    norm sums the parameters grouped by learning-rate group, in order of first appearance."""
    named = list(named)
    optimizer = build_optimizer(named, training)
    scheduler = build_scheduler(optimizer, training, steps)
    by_group: dict[str, list] = {}
    for n, p in named:
        by_group.setdefault(lr_group(n), []).append(p)
    params = [p for ps in by_group.values() for p in ps]
    for step in range(steps):
        loss = step_loss(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % every == 0 or step == steps - 1:
            log(f"{tag} step {step + 1}/{steps} loss {losses[-1]:.3f}{note() if note else ''}")
