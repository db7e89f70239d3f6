"""Optimiser with per-group learning rates (encoder / projector / LoRA) and warmup + decay schedules."""
from __future__ import annotations

import math

import torch

from .freeze import component_of

def lr_group(name: str) -> str:
    """encoder / projector / lora (the learning-rate groups of a recipe) from the component's name."""
    comp = component_of(name)
    for suffix, group in (("_lora", "lora"), ("_projector", "projector"), ("_encoder", "encoder")):
        if comp.endswith(suffix):
            return group
    return "other"


def build_optimizer(model, training) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of ``model`` (or of an iterable of (name, parameter) pairs,
    e.g. a model's plus a throw-away head's), one group per learning-rate group (``lr_group``)."""
    named = model.named_parameters() if hasattr(model, "named_parameters") else model
    groups: dict[str, list] = {}
    for name, p in named:
        if p.requires_grad:
            groups.setdefault(lr_group(name), []).append(p)
    params = [{"params": ps, "lr": float(training.lr_groups.get(g, training.lr)), "name": g}
              for g, ps in sorted(groups.items())]
    if not params:
        raise ValueError("nothing to train: the freeze plan leaves every parameter frozen")
    return torch.optim.AdamW(params, lr=training.lr, weight_decay=training.weight_decay, betas=tuple(training.betas),
                             eps=1e-8, foreach=False)


def effective_warmup(training, total_steps: int) -> int:
    """Warmup steps of a schedule ``total_steps`` long: ``training.warmup_steps``, at most a quarter of
    them (each sub-step has its own schedule; a warmup as long as the sub-step would leave no decay)."""
    return min(max(0, int(training.warmup_steps)), total_steps // 4)


def lr_lambda(training, total_steps: int):
    """Factor on the base lr for optimiser step ``step`` (0-based) of a ``total_steps`` schedule: a linear
    warmup reaching 1 on its last step, then cosine / linear decay to ``min_lr_ratio`` (or constant)."""
    warm = effective_warmup(training, total_steps)
    floor = float(training.min_lr_ratio)

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if training.schedule == "constant" or total_steps <= warm:
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if training.schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_scheduler(optimizer, training, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(training, total_steps))


def step_lrs(optimizer, training) -> dict[str, float]:
    """The learning rates the coming optimiser step uses: ``lr`` (the recipe's lr under the schedule)
    and ``lr_<group>`` for each group with its own rate (``training.lr_groups``)."""
    plain = [g for g in optimizer.param_groups if g["name"] not in training.lr_groups]
    if plain:
        out = {"lr": plain[0]["lr"]}
    else:
        g0 = optimizer.param_groups[0]
        out = {"lr": training.lr * g0["lr"] / g0["initial_lr"]}
    if training.lr_groups:
        out.update({f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups})
    return out


def rebase_groups(optimizer, scheduler, training) -> None:
    """After loading a checkpoint's optimiser and scheduler: each group's base lr and weight decay from
    ``training`` (the saved state brings the old ones) and its lr at the schedule's position. An
    unchanged recipe gives back exactly the saved values."""
    bases = [float(training.lr_groups.get(g["name"], training.lr)) for g in optimizer.param_groups]
    scheduler.base_lrs = bases
    for g, base, fn in zip(optimizer.param_groups, bases, scheduler.lr_lambdas):
        g["initial_lr"], g["weight_decay"] = base, training.weight_decay
        g["lr"] = base * fn(scheduler.last_epoch)
