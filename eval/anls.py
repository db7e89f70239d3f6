"""ANLS (Average Normalised Levenshtein Similarity), the DocVQA metric.

Per question, exactly as the official DocVQA / InfographicVQA evaluation script computes it
(and lmms-eval, which carries it: EvolvingLMMs-Lab/lmms-eval@75571cf, ``lmms_eval/api/metrics.py``
``anls``):

* each string is lowercased, stripped, and its internal whitespace collapsed to one space;
* for each ground-truth answer ``gt``: ``NL = levenshtein(gt', pred') / max(len(gt.upper()),
  len(pred.upper()))`` where ``gt'``/``pred'`` are the cleaned strings (edit distance over code
  points) and the lengths are those of the *raw* strings upper-cased: the same as the raw lengths
  for ASCII, longer for characters whose upper case is longer ("ß" -> "SS", "ﬁ" -> "FI",
  "ΐ" -> three code points); when both are empty, NL = 0;
* ``score = max over answers of (1 - NL)``, then set to 0 when ``score < 0.5`` (threshold
  ``tau = 0.5``). Equivalently: 0 when NL > 0.5; a question at exactly NL = 0.5 keeps 0.5
  (the implementations test ``1 - NL < 0.5``, so the boundary is kept).

``mean_anls`` is the mean of the per-question scores. A trailing "." costs partial credit:
``anls("paris.", ["paris"]) = 1 - 1/6``.
"""
from __future__ import annotations

from typing import Sequence

from .wer import MetricError

__all__ = ["anls", "mean_anls", "ANLS_THRESHOLD", "ANLS_REFERENCE"]

ANLS_THRESHOLD = 0.5
ANLS_REFERENCE = ("official DocVQA / InfographicVQA ANLS rule, as in EvolvingLMMs-Lab/lmms-eval@75571cf "
                  "lmms_eval/api/metrics.py anls (length rule max(len(gt.upper()), len(pred.upper())))")


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
        length = max(len(gt_raw.upper()), len(prediction.upper()))
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
