"""molora.eval: the published metrics and the runners that produce leaderboard-comparable numbers.

Metrics: ``normalize_english`` (Open ASR leaderboard normaliser, ``NORMALIZER_VERSION``),
``word_error_rate`` / ``wer_details`` (corpus level, percent), ``rtfx``, ``anls`` / ``mean_anls``
(DocVQA), ``relaxed_accuracy`` (ChartQA). Runners: ``molora.eval.asr``, ``molora.eval.docvqa``,
``molora.eval.chartqa`` (``molora eval asr|docvqa|chartqa``).
"""
from .anls import anls, mean_anls
from .normalizer import NORMALIZER_VERSION, normalize_english
from .relaxed import relaxed_accuracy, relaxed_accuracy_any
from .wer import MetricError, average_wer, rtfx, wer_details, word_error_rate

__all__ = ["normalize_english", "NORMALIZER_VERSION", "word_error_rate", "wer_details", "average_wer", "rtfx",
           "anls", "mean_anls", "relaxed_accuracy", "relaxed_accuracy_any", "MetricError"]
