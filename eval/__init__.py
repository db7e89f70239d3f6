"""molora.eval: the published metrics and the runners that produce leaderboard-comparable numbers.

Metrics: ``normalize_english(text, protocol=...)`` (the Open ASR leaderboard normaliser of a scoring
protocol; ``normalizer_name``), ``word_error_rate`` / ``wer_details`` (corpus level, percent, per
protocol), ``rtfx``, ``anls`` / ``mean_anls`` (DocVQA), ``relaxed_accuracy`` (ChartQA). Protocols:
``PROTOCOLS`` (``open-asr-2026``, the default, and ``open-asr``), each naming the code it reproduces.
Runners: ``molora.eval.asr``, ``molora.eval.docvqa``, ``molora.eval.chartqa``
(``molora eval asr|docvqa|chartqa``).
"""
from .anls import anls, mean_anls
from .normalizer import NORMALIZER_VERSION, normalize_english, normalizer_name
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS
from .relaxed import relaxed_accuracy, relaxed_accuracy_any
from .wer import MetricError, average_wer, rtfx, wer_details, word_error_rate

__all__ = ["normalize_english", "normalizer_name", "NORMALIZER_VERSION", "PROTOCOLS", "DEFAULT_PROTOCOL",
           "word_error_rate", "wer_details", "average_wer", "rtfx", "anls", "mean_anls", "relaxed_accuracy",
           "relaxed_accuracy_any", "MetricError"]
