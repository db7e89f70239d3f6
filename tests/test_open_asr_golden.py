"""molora's Open ASR scoring against the leaderboard's own code, on golden vectors.

``tests/data/open_asr_golden_<protocol>.json`` were written by ``scripts/open_asr_reference.py``, which ran
huggingface/open_asr_leaderboard's normaliser and ``score_results`` at the commit recorded in the file
(classic: 228bb78, 2025-03, the Phi-4-multimodal submission, WER through huggingface/evaluate's ``wer``
metric; current: d1e99b2, 2026-08, kaldialign with merged compounds, chunked sets joined per call).
Nothing here comes from molora's own output: every expected value is the leaderboard's.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from molora.eval import PROTOCOLS, normalize_english
from molora.eval.asr import score_rows
from molora.eval.protocols import get_protocol

DATA = Path(__file__).parent / "data"
COMMITS = {"open-asr": "228bb78166576af550892c02c4840a46a3cbc673",
           "open-asr-2026": "d1e99b25524814332d6868a5645e568670834cfb"}


@lru_cache(maxsize=None)
def golden(protocol: str) -> dict:
    return json.loads((DATA / f"open_asr_golden_{protocol}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("protocol", sorted(COMMITS))
def test_golden_vectors_come_from_the_named_commit(protocol):
    g = golden(protocol)
    assert g["protocol"] == protocol
    assert g["source"]["repository"] == "huggingface/open_asr_leaderboard"
    assert g["source"]["commit"] == COMMITS[protocol] == get_protocol(protocol).source["commit"]
    assert len(g["normalizer"]) > 3000 and len(g["wer_sets"]) > 1400


@pytest.mark.parametrize("protocol", sorted(COMMITS))
def test_normaliser_equals_the_leaderboard(protocol):
    # the leaderboard's output keeps surrounding spaces ("uh so" -> " so"); molora strips them (no word changes)
    bad = [(text, want, got) for text, want in golden(protocol)["normalizer"]
           if (got := normalize_english(text, protocol)) != want.strip()]
    assert not bad, f"{len(bad)} differences, first: {bad[:3]}"


@pytest.mark.parametrize("protocol", sorted(COMMITS))
def test_wer_and_rtfx_equal_the_leaderboard(protocol):
    """Each golden set scored through ``score_rows`` (the per-set scoring of ``molora eval asr``): the rows the
    leaderboard kept after its empty-reference filter, with their durations and times."""
    mismatches = []
    for s in golden(protocol)["wer_sets"]:
        rows = [s["rows"][i] for i in s["kept_rows"]]
        ours = score_rows(rows, protocol)
        theirs = (s["wer"], s["rtfx"])
        if (ours["wer"], ours["rtfx"]) != theirs:
            mismatches.append((s["name"], (ours["wer"], ours["rtfx"]), theirs))
        if "sub" in s and (ours["substitutions"], ours["deletions"], ours["insertions"]) != (s["sub"], s["del"],
                                                                                            s["ins"]):
            mismatches.append((s["name"], "counts", (ours["substitutions"], ours["deletions"], ours["insertions"]),
                               (s["sub"], s["del"], s["ins"])))
    assert not mismatches, f"{len(mismatches)} differences, first: {mismatches[:3]}"


def test_golden_sets_cover_what_differs():
    """The vectors exercise the protocol differences: the two normalisers disagree on many cases, and the
    current protocol's sets include chunked calls and merged compounds."""
    current = golden("open-asr-2026")
    differ = sum(normalize_english(t, "open-asr") != want.strip() for t, want in current["normalizer"])
    assert differ > 500
    # outputs of the leaderboard's EnglishTextNormalizer at 228bb78 / d1e99b2 (run by hand on these inputs)
    text = "John's here, the B B C said OK, huh?"
    assert normalize_english(text, "open-asr") == "john is here the b b c said ok huh"
    assert normalize_english(text, "open-asr-2026") == "john s here the bbc said okay"
    assert normalize_english("archaeology", "open-asr") == "archeology</span>"     # the 2025 map's typo, reproduced
    assert normalize_english("archaeology", "open-asr-2026") == "archeology"
    assert any("parent_id" in r for s in current["wer_sets"] for r in s["rows"])
    compound = [s for s in current["wer_sets"] if s["wer"] < score_rows([s["rows"][i] for i in s["kept_rows"]],
                                                                        "open-asr")["wer"]]
    assert compound, "no set where kaldialign's compound merging or the 2026 normaliser lowers the WER"


def test_protocols_name_the_code_they_reproduce():
    for name, p in PROTOCOLS.items():
        d = p.describe()
        assert d["reproduces"] == f"huggingface/open_asr_leaderboard@{COMMITS[name]}"
        assert "normalizer/normalizer.py" in d["files"]
    assert "kaldialign.batch_error_rate" in PROTOCOLS["open-asr-2026"].wer_code
    assert "merge_compounds=True" in PROTOCOLS["open-asr-2026"].wer_code
    assert "evaluate.load('wer')" in PROTOCOLS["open-asr"].wer_code
