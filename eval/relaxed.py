"""Relaxed accuracy, the ChartQA metric (Methani et al.; the pix2struct / harness implementation).

``relaxed_accuracy(prediction, target)``, exactly:

1. Parse each string as a number: if it ends with "%", ``float(text[:-1]) / 100`` (all
   trailing "%" removed); otherwise ``float(text)``. Anything ``float()`` rejects does not
   parse ("1,000", "$5", "ten"); ``float()`` itself accepts surrounding whitespace, "1995."
   and "1e3".
2. If the prediction parses and the target parses to a **non-zero** number:
   correct iff ``|pred - target| / |target| <= 0.05`` (tolerance relative to the TARGET, so
   the argument order matters).
3. Otherwise: correct iff ``prediction.lower() == target.lower()`` (no stripping: "Yes." is
   not "yes").

Consequences: "45%" vs "45" is wrong (0.45 vs 45); a zero target falls back to string
equality ("0.0" vs "0" is wrong). ``relaxed_accuracy_any`` takes the best over several targets.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["relaxed_accuracy", "relaxed_accuracy_any", "RELATIVE_TOLERANCE", "RELAXED_REFERENCE"]

RELATIVE_TOLERANCE = 0.05
RELAXED_REFERENCE = ("relaxed_correctness of pix2struct / Qwen-VL eval_mm/evaluate_vqa.py, as in "
                     "EvolvingLMMs-Lab/lmms-eval@75571cf lmms_eval/tasks/chartqa/utils.py")


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, target: str, tolerance: float = RELATIVE_TOLERANCE) -> bool:
    """True when ``prediction`` matches ``target`` under ChartQA's relaxed rule (module docstring)."""
    prediction, target = str(prediction), str(target)
    p, t = _to_float(prediction), _to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= tolerance
    return prediction.lower() == target.lower()


def relaxed_accuracy_any(prediction: str, targets: Sequence[str] | str) -> bool:
    """Correct against any of several targets (ChartQA has one per question)."""
    if isinstance(targets, str):
        targets = [targets]
    return any(relaxed_accuracy(prediction, t) for t in targets)
