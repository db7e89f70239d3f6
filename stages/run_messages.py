"""What a training run prints: the plan's warnings, the banner of each sub-step and the summary at the end."""
from __future__ import annotations

from pathlib import Path

from .freeze import parameter_table
from .loss_curve import loss_windows
from .optim import effective_warmup

__all__ = ["substep_banner", "print_run_summary", "plan_notes", "loss_summary"]


def _lrs(recipe, optimizer) -> str:
    """The base learning rate of each parameter group the sub-step trains ("lr 0.01", or per group)."""
    groups = {g["name"]: g.get("initial_lr", g["lr"]) for g in optimizer.param_groups} if optimizer else {}
    if not groups or all(v == recipe.training.lr for v in groups.values()):
        return f"lr {recipe.training.lr:g}"
    return "lr " + ", ".join(f"{name} {v:g}" for name, v in groups.items())


def substep_banner(recipe, sub, start: int, n: int, model, optimizer=None) -> str:
    t = recipe.training
    warm = effective_warmup(t, n)
    note = f", warmup {warm}" + (f" (training.warmup_steps={t.warmup_steps} capped at a quarter of the sub-step)"
                                 if warm < t.warmup_steps else "")
    return (f"\n[molora] {recipe.stage} / {sub.name}: steps {start + 1}-{start + n} of {recipe.max_steps} "
            f"({t.schedule} {_lrs(recipe, optimizer)}{note}), training {sub.train}\n{parameter_table(model, sub.train)}")


def plan_notes(recipe) -> list[str]:
    """Lines printed before the first step: sub-steps that get no step, and when data.eval is evaluated."""
    lines = []
    empty = [s.name for s, (_, n) in zip(recipe.substeps, recipe.substep_bounds()) if n == 0]
    if empty:
        per = ", ".join(f"{s.name} {n}" for s, (_, n) in zip(recipe.substeps, recipe.substep_bounds()))
        lines.append(f"[molora] warning: max_steps={recipe.max_steps} gives sub-step(s) {', '.join(empty)} no step "
                     f"(steps per sub-step: {per}); raise max_steps to train every sub-step")
    if recipe.data.get("eval"):
        every = recipe.training.eval_every
        when = (f"every {every} steps and at the end" if every else
                "at the end of the run (training.eval_every=N evaluates every N steps too)")
        lines.append(f"[molora] data.eval is evaluated {when}")
    return lines


def loss_summary(rows: list[dict]) -> dict:
    """Window means of the logged loss (and DPO rewards) over the first and last tenth of the logged
    steps: {"loss": {"first", "last", "first_steps": [a, b], "last_steps": [c, d]}, ...}."""
    out = {}
    for key in ("loss", "reward_margin", "reward_accuracy"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if not pts:
            continue
        first, last, k = loss_windows([v for _, v in pts])
        out[key] = {"first": first, "last": last, "first_steps": [pts[0][0], pts[k - 1][0]],
                    "last_steps": [pts[-k][0], pts[-1][0]]}
    return out


def _span(steps: list[int]) -> str:
    return f"step {steps[0]}" if steps[0] == steps[1] else f"steps {steps[0]}-{steps[1]}"


def print_run_summary(out: Path, summary: dict, skipped: list[dict]) -> None:
    """The end-of-run lines: steps, time, loss (first and last tenth), DPO rewards, the evaluation,
    skips, where things are."""
    lines = [f"[molora] done: {summary['steps']} step(s) in {summary['wall_seconds']:.0f} s"]
    for i, (key, w) in enumerate(summary.get("windows", {}).items()):
        lines.append(f"  {key} {w['first']:.4f} ({_span(w['first_steps'])}) -> {w['last']:.4f} ({_span(w['last_steps'])})"
                     + ("   (means over the first and the last tenth of the logged steps)" if i == 0 else ""))
    ev = summary.get("eval")
    if ev:
        lines.append(f"  eval (step {ev['step']}): " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if k != "step"))
    if skipped:
        lines.append(f"  skipped {len(skipped)} bad sample(s), listed in {out / 'summary.json'}:")
        lines += [f"    {s['source']}: {s['item']}: {s['reason']}" for s in skipped[:20]]
        if len(skipped) > 20:
            lines.append(f"    ... and {len(skipped) - 20} more")
    lines.append(f"  model: {out / 'final'}   metrics: {out / 'metrics.jsonl'}   summary: {out / 'summary.json'}"
                 + (f"   plot: {out / 'loss.png'}" if (out / "loss.png").exists() else ""))
    print("\n".join(lines))
