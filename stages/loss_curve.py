"""A run's training loss as a curve: window means for the end-of-run summary and ``loss.png``.

One step's loss depends on what its batch held, so the summary compares means over the first and
the last tenth of the logged steps, and the plot draws a moving average over the raw curve.
The quickstart's report draws its per-stage panels with the same ``draw_loss``.
"""
from __future__ import annotations

from pathlib import Path

from .run_state import replacing

__all__ = ["loss_windows", "draw_loss", "save_loss_plot"]


def loss_windows(values: list[float]) -> tuple[float, float, int]:
    """(mean of the first tenth, mean of the last tenth, the window's length: at least one value)."""
    k = max(1, len(values) // 10)
    return sum(values[:k]) / k, sum(values[-k:]) / k, k


def draw_loss(ax, steps: list[int], losses: list[float], label: str = "training loss") -> None:
    """The raw curve, faint, and its moving average over ~5% of the steps."""
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, lw=0.8)
    k = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
    ax.plot(steps, smooth, color="tab:blue", lw=1.6, label=label if k == 1 else f"{label} (mean of {k} steps)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def save_loss_plot(path: Path, rows: list[dict], title: str = "") -> Path | None:
    """``path`` (a PNG) from metrics rows: the training loss, and the eval loss where it was measured.
    Written beside its place and renamed in; None when no row has a loss."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train:
        return None
    fig = Figure(figsize=(6, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw_loss(ax, [s for s, _ in train], [v for _, v in train])
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", color="tab:orange", lw=1, ms=3, label="eval loss")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    return path
