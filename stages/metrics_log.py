"""metrics.jsonl and TensorBoard for a training run (rank 0 writes; a resumed run drops the rows past
its step, and a line a killed run left half-written, saying so)."""
from __future__ import annotations

import json
from pathlib import Path

from .run_state import write_text_atomic

__all__ = ["MetricsLog", "read_rows"]


def read_rows(path: Path, announce: bool = False) -> list[dict]:
    """The rows of a metrics.jsonl; a line that is not a JSON object (the torn last line of a run that
    was killed while writing it) is left out, and with ``announce`` named in one printed line."""
    rows, torn = [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            torn.append(i)
    if torn and announce:
        print(f"[molora] {path}: dropped unreadable line(s) {', '.join(map(str, torn))} (a write cut short when "
              "the run stopped)")
    return rows


class MetricsLog:
    """metrics.jsonl (+ TensorBoard when available) on rank 0; a resumed run drops rows past its step."""

    def __init__(self, out: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            keep = [json.dumps(r) for r in read_rows(self.path, announce=True) if r.get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(l + "\n" for l in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)
        except Exception:  # tensorboard missing: JSONL only
            self.tb = None

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()
