"""Open ASR leaderboard scoring protocols, as data: which sets from which datasets, which normaliser,
which WER algorithm, how numbers are rounded, and the exact code each one reproduces.

* ``open-asr`` (classic): the protocol of the published Phi-4-multimodal / Whisper numbers
  (Phi-4-multimodal's 6.14 average). huggingface/open_asr_leaderboard at 228bb78 (2025-03-13, the
  Phi-4-multimodal scripts; its normaliser was unchanged from 2024-06 to 2025-08): eight ESB sets
  from ``hf-audio/esb-datasets-test-only-sorted``; references normalised and filtered when the data
  is prepared, predictions normalised after decoding; WER from ``evaluate.load("wer")`` (jiwer
  alignment per utterance, errors and reference words summed over the set).
* ``open-asr-2026`` (current): huggingface/open_asr_leaderboard at d1e99b2 (2026-08-21): seven sets
  (TED-LIUM dropped; AMI / GigaSpeech / VoxPopuli cleaned; Earnings22 from
  ``ArtificialAnalysis/Earnings22-Cleaned-AA-chunked`` whose chunks are joined per call before
  scoring, the call transcripts coming from ``ArtificialAnalysis/Earnings22-Cleaned-AA``); raw texts
  normalised at scoring with the 2026 normaliser; WER from
  ``kaldialign.batch_error_rate(refs, hyps, merge_compounds=True)`` ("white paper" vs "whitepaper" is
  no error).

Both: per-set WER = 100 x errors / reference words, rounded to 2 decimals; the average is the
unweighted mean of the rounded per-set WERs, rounded to 2; per-set RTFx = audio seconds / timed
seconds rounded to 4 decimals, composite RTFx (all audio / all time) rounded to 2. Averages of the
two protocols are not comparable: every summary names the protocol and its code.

The normaliser tables live in ``protocol_data/<name>.json`` (written by
``scripts/open_asr_reference.py`` from the leaderboard checkout, with its commit); the set lists
below are read off the same commits (``phi/run_phi4_multimodal.sh`` at 228bb78; the "public" family of
``normalizer/eval_utils.py`` and the README at d1e99b2).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from molora.errors import ConfigError
from molora.prompts import ASR_PROMPT, EARNINGS22_PROMPT

__all__ = ["AsrSet", "Protocol", "PROTOCOLS", "DEFAULT_PROTOCOL", "get_protocol", "normalizer_rules"]

DEFAULT_PROTOCOL = "open-asr-2026"


@dataclass(frozen=True)
class AsrSet:
    name: str
    dataset: str | None = None          # hub id, or local dataset path (source "data")
    config: str | None = None
    split: str = "test"
    prompt: str = ASR_PROMPT
    source: str = "hub"                 # "hub" | "data" | "manifest"
    path: str | None = None             # local dataset or manifest path
    transcripts: str | None = None      # chunked sets: the hub dataset holding one transcript per call


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    sets: tuple[AsrSet, ...]
    wer: str                            # "evaluate-wer" | "kaldialign-merge-compounds"
    wer_code: str                       # what computes it, named exactly
    reference_settings: dict = field(default_factory=dict)
    wer_decimals: int = 2
    rtfx_decimals: int = 4
    composite_rtfx_decimals: int = 2

    @property
    def source(self) -> dict:
        """``{"repository", "commit", "files"}`` of the leaderboard code this protocol reproduces."""
        return _data(self.name)["source"]

    def reproduces(self) -> str:
        return f"{self.source['repository']}@{self.source['commit']}"

    def describe(self) -> dict:
        """What every summary records about the scoring."""
        return {"name": self.name, "description": self.description, "reproduces": self.reproduces(),
                "files": self.source["files"], "wer": self.wer_code,
                "rounding": f"per-set WER {self.wer_decimals} decimals; average = mean of the rounded per-set WERs, "
                            f"{self.wer_decimals} decimals; per-set RTFx {self.rtfx_decimals} decimals, composite "
                            f"RTFx {self.composite_rtfx_decimals}",
                "reference_settings": self.reference_settings}


def _sets(dataset: str, pairs, earnings_prompt: bool = False) -> tuple[AsrSet, ...]:
    return tuple(AsrSet(f"{c}_{s}", dataset, c, s,
                        EARNINGS22_PROMPT if earnings_prompt and c.startswith("earnings22") else ASR_PROMPT)
                 for c, s in pairs)


_ESB = "hf-audio/esb-datasets-test-only-sorted"
_OASR = "hf-audio/open-asr-leaderboard"
_EARNINGS_CHUNKED = AsrSet("earnings22_cleaned_aa_chunked_test", "ArtificialAnalysis/Earnings22-Cleaned-AA-chunked",
                           None, "test", transcripts="ArtificialAnalysis/Earnings22-Cleaned-AA")

PROTOCOLS: dict[str, Protocol] = {
    "open-asr": Protocol(
        "open-asr", "Open ASR leaderboard, classic protocol (8 ESB sets; the published Phi-4-multimodal and "
                    "Whisper numbers)",
        _sets(_ESB, [("ami", "test"), ("earnings22", "test"), ("gigaspeech", "test"), ("librispeech", "test.clean"),
                     ("librispeech", "test.other"), ("spgispeech", "test"), ("tedlium", "test"),
                     ("voxpopuli", "test")], earnings_prompt=True),
        wer="evaluate-wer",
        wer_code="evaluate.load('wer') = huggingface/evaluate metrics/wer/wer.py: jiwer word alignment per "
                 "utterance, (S + D + I) and (S + D + H) summed over the set",
        reference_settings={"script": "phi/run_phi4_multimodal.sh", "batch_size": 32, "max_new_tokens": 512,
                            "num_beams": 1, "dtype": "bfloat16"}),
    "open-asr-2026": Protocol(
        "open-asr-2026", "Open ASR leaderboard, current protocol (7 sets: TED-LIUM dropped, cleaned AMI / "
                         "GigaSpeech / VoxPopuli, chunked Earnings22); not comparable with the classic protocol",
        _sets(_OASR, [("ami_cleaned", "test")]) + (_EARNINGS_CHUNKED,) + _sets(
            _OASR, [("gigaspeech_cleaned", "test"), ("librispeech", "test.clean"), ("librispeech", "test.other"),
                    ("spgispeech", "test"), ("voxpopuli_cleaned_aa", "test")], earnings_prompt=False),
        wer="kaldialign-merge-compounds",
        wer_code="kaldialign.batch_error_rate(refs, hyps, merge_compounds=True)['err_rate'] (normalizer/eval_utils.py "
                 "score_results; kaldialign 0.12)",
        reference_settings={"script": "phi/run_phi4_multimodal.sh", "batch_size": 160, "max_new_tokens": 128,
                            "num_beams": 1, "dtype": "bfloat16", "warmup_steps": 2}),
}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(f"unknown scoring protocol {name!r} (known: {', '.join(PROTOCOLS)})", "protocol") from None


@lru_cache(maxsize=None)
def _data(name: str) -> dict:
    path = resources.files("molora.eval").joinpath("protocol_data", f"{name}.json")
    with path.open("r", encoding="utf-8") as f:
        return json.load(f)


def normalizer_rules(name: str) -> dict:
    """The normaliser tables of protocol ``name`` (see ``molora.eval.normalizer``)."""
    get_protocol(name)
    return _data(name)["normalizer"]
