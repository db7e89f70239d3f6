"""Word error rate (corpus level, in percent) and RTFx, as the Open ASR leaderboard computes them.

Definitions (exact), per scoring protocol (``molora.eval.protocols``; default ``open-asr-2026``):

* Each reference and hypothesis is normalised with ``normalize_english(text, protocol)`` (unless
  ``normalize=False``; then texts are only split on whitespace).
* A pair is **dropped** (reference and hypothesis together) when the normalised reference is
  empty, or is TED-LIUM's placeholder ``ignore_time_segment_in_scoring`` (raw, or normalised to
  "ignore time segment in scoring"): the leaderboard filters these when it prepares the data.
* Over the remaining pairs words are aligned per pair and the errors counted:
  ``open-asr``: jiwer (what ``evaluate.load("wer")`` runs), substitutions S, deletions D,
  insertions I, hits H, N = S + D + H reference words;
  ``open-asr-2026``: ``kaldialign.batch_error_rate(refs, hyps, merge_compounds=True)``: the same
  counts, except that a compound split on one side and joined on the other ("white paper" /
  "whitepaper") is no error; N = reference words.
* ``WER = 100 * (S + D + I) / N``: corpus level (errors summed over the set, then divided), not a
  mean of per-utterance rates. Not rounded here; the leaderboard reports ``round(WER, 2)``, and its
  average is the unweighted mean of those rounded per-set numbers (``average_wer``).
* An empty hypothesis is allowed (all its reference words are deletions). If every pair is
  dropped, N = 0 and WER is undefined: ``MetricError``.

``RTFx = audio seconds / inference seconds`` (how many seconds of audio one second of compute
transcribes); composite RTFx over several sets = all audio / all time.
"""
from __future__ import annotations

from typing import Sequence

from molora.errors import MoLoRAError

from .normalizer import normalize_english
from .protocols import DEFAULT_PROTOCOL, get_protocol

__all__ = ["word_error_rate", "wer_details", "rtfx", "average_wer", "is_scored_reference", "MetricError",
           "TEDLIUM_IGNORE"]

TEDLIUM_IGNORE = "ignore_time_segment_in_scoring"
_TEDLIUM_IGNORE_NORMALIZED = "ignore time segment in scoring"


class MetricError(MoLoRAError):
    """A metric cannot be computed from the given inputs (length mismatch, nothing to score)."""


def is_scored_reference(reference: str, normalize: bool = True, protocol: str = DEFAULT_PROTOCOL) -> bool:
    """False for references the leaderboard drops: empty after normalisation, or TED-LIUM's
    ``ignore_time_segment_in_scoring``."""
    if reference.strip() == TEDLIUM_IGNORE:
        return False
    ref = normalize_english(reference, protocol) if normalize else " ".join(reference.split())
    return ref != "" and ref != _TEDLIUM_IGNORE_NORMALIZED


def _counts(refs: list[str], hyps: list[str], algorithm: str) -> tuple[int, int, int, int, float]:
    """``(S, D, I, N, error rate)`` of normalised pairs, with the protocol's algorithm."""
    if algorithm == "kaldialign-merge-compounds":
        import kaldialign

        r = kaldialign.batch_error_rate([tuple(x.split()) for x in refs], [tuple(x.split()) for x in hyps],
                                        merge_compounds=True)
        return r["sub"], r["del"], r["ins"], r["ref_len"], r["err_rate"]
    import jiwer

    out = jiwer.process_words(refs, hyps)
    s, d, i = out.substitutions, out.deletions, out.insertions
    n = s + d + out.hits
    return s, d, i, n, (s + d + i) / n


def wer_details(references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True,
                protocol: str = DEFAULT_PROTOCOL) -> dict:
    """Corpus-level WER and its counts under ``protocol``.

    Returns ``{"wer": percent (unrounded), "error_rate": fraction, "substitutions": S, "deletions": D,
    "insertions": I, "hits": H, "reference_words": N, "dropped": number of pairs dropped, "protocol"}``.
    Raises ``MetricError`` when the lists differ in length or nothing is left to score.
    """
    algorithm = get_protocol(protocol).wer
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise MetricError(f"{len(references)} references but {len(hypotheses)} hypotheses", "word_error_rate")
    for what, seq in (("reference", references), ("hypothesis", hypotheses)):
        for i, t in enumerate(seq):
            if not isinstance(t, str):
                raise MetricError(f"{what} {i} must be a string, got {type(t).__name__}", "word_error_rate")
    refs, hyps, dropped = [], [], 0
    for ref, hyp in zip(references, hypotheses):
        if not is_scored_reference(ref, normalize, protocol):
            dropped += 1
            continue
        refs.append(normalize_english(ref, protocol) if normalize else " ".join(ref.split()))
        hyps.append(normalize_english(hyp, protocol) if normalize else " ".join(hyp.split()))
    if not refs:
        raise MetricError(f"no reference words to score (all {dropped} reference(s) are empty after "
                          "normalisation or ignored)", "word_error_rate")
    s, d, i, n, rate = _counts(refs, hyps, algorithm)
    # 100 * (errors / N), as the leaderboard multiplies its error rate (the rounding then agrees bit for bit)
    return {"wer": 100 * rate, "error_rate": rate, "substitutions": s, "deletions": d, "insertions": i,
            "hits": n - s - d, "reference_words": n, "dropped": dropped, "protocol": protocol}


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True,
                    protocol: str = DEFAULT_PROTOCOL) -> float:
    """Corpus-level WER in percent (6.14 means 6.14%), unrounded, under ``protocol`` (module docstring)."""
    return wer_details(references, hypotheses, normalize, protocol)["wer"]


def average_wer(per_set_wer: Sequence[float]) -> float:
    """The leaderboard average: unweighted mean of the per-set WERs *rounded to 2 decimals*,
    itself rounded to 2 decimals."""
    vals = [round(float(w), 2) for w in per_set_wer]
    if not vals:
        raise MetricError("no per-set WER to average", "average_wer")
    return round(sum(vals) / len(vals), 2)


def rtfx(audio_seconds: float, inference_seconds: float) -> float:
    """Inverse real-time factor: ``audio_seconds / inference_seconds`` (unrounded).

    Raises ``MetricError`` when ``inference_seconds`` is not positive (nothing was timed)."""
    if inference_seconds <= 0:
        raise MetricError(f"inference time must be positive, got {inference_seconds}", "rtfx")
    if audio_seconds < 0:
        raise MetricError(f"audio duration must be non-negative, got {audio_seconds}", "rtfx")
    return float(audio_seconds) / float(inference_seconds)
