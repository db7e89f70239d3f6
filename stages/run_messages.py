"""What a training run prints: the banner of each sub-step and the summary at the end."""
from __future__ import annotations

from pathlib import Path

from .freeze import parameter_table
from .optim import effective_warmup

__all__ = ["substep_banner", "print_run_summary"]


def substep_banner(recipe, sub, start: int, n: int, model) -> str:
    t = recipe.training
    warm = effective_warmup(t, n)
    note = f", warmup {warm}" + (f" (training.warmup_steps={t.warmup_steps} capped at a quarter of the sub-step)"
                                 if warm < t.warmup_steps else "")
    return (f"\n[molora] {recipe.stage} / {sub.name}: steps {start + 1}-{start + n} of {recipe.max_steps} "
            f"({t.schedule} lr {t.lr:g}{note}), training {sub.train}\n{parameter_table(model, sub.train)}")


def print_run_summary(out: Path, summary: dict, first: dict, skipped: list[dict]) -> None:
    """The end-of-run lines: steps, time, loss first -> last, DPO rewards, skips, where things are."""
    last = summary["final"]
    lines = [f"[molora] done: {summary['steps']} step(s) in {summary['wall_seconds']:.0f} s"]
    if first and last:
        lines.append(f"  loss {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} (step {last['step']})")
    for k in ("reward_margin", "reward_accuracy"):
        if k in last:
            lines.append(f"  {k} {first.get(k, 0.0):.4f} -> {last[k]:.4f}")
    if skipped:
        lines.append(f"  skipped {len(skipped)} bad sample(s), listed in {out / 'summary.json'}:")
        lines += [f"    {s['source']}: {s['item']}: {s['reason']}" for s in skipped[:20]]
        if len(skipped) > 20:
            lines.append(f"    ... and {len(skipped) - 20} more")
    lines.append(f"  model: {out / 'final'}   metrics: {out / 'metrics.jsonl'}   summary: {out / 'summary.json'}")
    print("\n".join(lines))
