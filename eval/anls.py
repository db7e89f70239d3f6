"""ANLS (Average Normalised Levenshtein Similarity), the DocVQA metric.

Per question, as the common implementations (the DocVQA/ST-VQA evaluation scripts and the
harnesses derived from them) compute it:

* each string is lowercased, stripped, and its internal whitespace collapsed to one space;
* for each ground-truth answer ``gt``: ``NL = levenshtein(gt', pred') / max(len(gt), len(pred))``
  where ``gt'``/``pred'`` are the cleaned strings and the lengths are those of the *raw*
  strings (before cleaning); when both raw strings are empty, NL = 0;
* ``score = max over answers of (1 - NL)``, then set to 0 when ``score < 0.5`` (threshold
  ``tau = 0.5``). Equivalently: 0 when NL > 0.5; a question at exactly NL = 0.5 keeps 0.5
  (the implementations test ``1 - NL < 0.5``, so the boundary is kept).

``mean_anls`` is the mean of the per-question scores. A trailing "." costs partial credit:
``anls("paris.", ["paris"]) = 1 - 1/6``.
"""
from __future__ import annotations

from typing import Sequence

from .wer import MetricError

__all__ = ["anls", "mean_anls", "ANLS_THRESHOLD"]

ANLS_THRESHOLD = 0.5


def _clean(s: str) -> str:
    return " ".join(s.strip().lower().split())


def anls(prediction: str, answers: Sequence[str] | str, threshold: float = ANLS_THRESHOLD) -> float:
    """ANLS of one prediction against its ground-truth answers, in [0, 1] (module docstring)."""
    from rapidfuzz.distance import Levenshtein

    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise MetricError("a question needs at least one ground-truth answer", "anls")
    prediction = "" if prediction is None else str(prediction)
    pred = _clean(prediction)
    best = 0.0
    for gt_raw in answers:
        gt_raw = str(gt_raw)
        length = max(len(gt_raw), len(prediction))
        nl = 0.0 if length == 0 else Levenshtein.distance(_clean(gt_raw), pred) / length
        best = max(best, 1.0 - nl)
    return 0.0 if best < threshold else best


def mean_anls(predictions: Sequence[str], answers_list: Sequence[Sequence[str]]) -> float:
    """Mean per-question ANLS (0..1) over a set of questions."""
    if len(predictions) != len(answers_list):
        raise MetricError(f"{len(predictions)} predictions but {len(answers_list)} answer lists", "mean_anls")
    if not predictions:
        raise MetricError("no questions to score", "mean_anls")
    return sum(anls(p, a) for p, a in zip(predictions, answers_list)) / len(predictions)
