"""The evaluation metrics against their published definitions (docs/reference: evaluation.md).

Every expected value below is worked out by hand from the definitions, in the comments; none
comes from running molora's own code.
"""
from __future__ import annotations

import json
from importlib import resources

import pytest

from molora.eval import (NORMALIZER_VERSION, MetricError, anls, average_wer, mean_anls, normalize_english,
                         relaxed_accuracy, rtfx, wer_details, word_error_rate)


# ----------------------------------------------------------------------------------------
# normaliser (Whisper EnglishTextNormalizer + whisper-normalizer english.json)
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("Twenty five", "25"),                      # spelled numbers -> digits
    ("one thousand two hundred", "1200"),
    ("I won't go", "i will not go"),            # contractions expanded ("won't" -> "will not")
    ("They're here", "they are here"),
    ("The colour of the centre", "the color of the center"),   # British -> American (english.json)
    ("[noise] hello (laughs) there <unk>", "hello there"),     # bracketed spans dropped
    ("uh so um yes", "so yes"),                 # fillers dropped
    ("Mr. Smith", "mister smith"),              # titles expanded, period removed
    ("Hello,   WORLD!", "hello world"),         # lowercase, symbols stripped, spaces collapsed
    ("1,000 people", "1000 people"),            # comma between digits removed
    ("[noise]", ""),                            # nothing left -> ""
])
def test_normalizer_cases(text, expected):
    assert normalize_english(text) == expected


def test_normalizer_uses_the_shipped_spelling_map_and_names_its_version():
    mapping = json.loads(resources.files("whisper_normalizer").joinpath("normalizers/english.json").read_text())
    british = next(k for k, v in mapping.items() if k != v and " " not in k)
    assert normalize_english(british) == mapping[british]
    assert "transformers" in NORMALIZER_VERSION and "whisper-normalizer" in NORMALIZER_VERSION
    assert "english.json" in NORMALIZER_VERSION


# ----------------------------------------------------------------------------------------
# WER
# ----------------------------------------------------------------------------------------
def test_wer_counts_on_a_tiny_corpus():
    refs = ["The cat sat on the mat", "hello world", "[noise]", "ignore_time_segment_in_scoring"]
    hyps = ["the cat sit on mat", "hello big world", "something", "whatever"]
    # pair 1: the=the cat=cat sat->sit (S) on=on "the" missing (D) mat=mat -> S1 D1 H4, 6 ref words
    # pair 2: hello=hello, "big" extra (I), world=world                  -> I1 H2, 2 ref words
    # pair 3: reference normalises to ""                 -> dropped with its hypothesis
    # pair 4: TED-LIUM "ignore_time_segment_in_scoring" -> dropped
    # WER = (S+D+I)/N = (1+1+1)/8 = 37.5 %
    d = wer_details(refs, hyps)
    assert (d["substitutions"], d["deletions"], d["insertions"], d["hits"]) == (1, 1, 1, 6)
    assert d["reference_words"] == 8 and d["dropped"] == 2
    assert d["wer"] == pytest.approx(37.5)
    assert word_error_rate(refs, hyps) == pytest.approx(37.5)


def test_wer_is_corpus_level_not_a_mean_of_utterances():
    # errors summed then divided: (0 + 1) / (4 + 1) = 20 %; a mean of utterance WERs would be 50 %
    assert word_error_rate(["a b c d", "e"], ["a b c d", "x"], normalize=False) == pytest.approx(20.0)


def test_wer_normalises_both_sides():
    # "Twenty five colours" -> "25 colors"; "25 colors!" -> "25 colors": no error
    assert word_error_rate(["Twenty five colours"], ["25 colors!"]) == 0.0
    # without normalisation: 3 reference words vs 2 hypothesis words, all different -> S2 D1 = 100 %
    assert word_error_rate(["Twenty five colours"], ["25 colors!"], normalize=False) == pytest.approx(100.0)


def test_wer_empty_hypothesis_and_edge_errors():
    # empty hypothesis: every reference word deleted -> D3, N3, 3/3 = 100 %
    d = wer_details(["red green blue"], [""])
    assert (d["deletions"], d["reference_words"], d["wer"]) == (3, 3, 100.0)
    with pytest.raises(MetricError, match="no reference words"):
        word_error_rate(["[noise]", "uh"], ["a", "b"])
    with pytest.raises(MetricError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def test_average_is_the_mean_of_rounded_per_set_wers():
    # rounded per set: 0.006 -> 0.01, 0.0 -> 0.0; mean 0.005 -> 0.01.
    # (the unrounded mean 0.003 would round to 0.0)
    assert average_wer([0.006, 0.0]) == 0.01
    assert average_wer([6.14, 2.5]) == pytest.approx(4.32)


def test_rtfx():
    # 3600 s of audio in 36 s of compute -> 100x real time
    assert rtfx(3600.0, 36.0) == pytest.approx(100.0)
    with pytest.raises(MetricError):
        rtfx(10.0, 0.0)


# ----------------------------------------------------------------------------------------
# ANLS
# ----------------------------------------------------------------------------------------
def test_anls_exact_case_and_whitespace():
    assert anls("Paris", ["paris"]) == 1.0                    # lowercased
    assert anls("  new   york ", ["New York"]) == 1.0         # stripped, whitespace collapsed
    assert anls("", [""]) == 1.0                              # both empty: NL = 0


def test_anls_threshold_boundary():
    # "abxy" vs "abcd": 2 edits / max(4, 4) = 0.5 -> 1 - 0.5 = 0.5; exactly 0.5 is KEPT
    assert anls("abxy", ["abcd"]) == 0.5
    # "axy" vs "abc": 2 / 3 = 0.667 > 0.5 -> 0
    assert anls("axy", ["abc"]) == 0.0
    # "abcxy" vs "abcde": 2 / 5 = 0.4 -> 0.6
    assert anls("abcxy", ["abcde"]) == pytest.approx(0.6)


def test_anls_trailing_period_partial_credit_and_raw_lengths():
    # "paris." vs "paris": 1 edit / max(5, 6) = 1/6 -> 5/6
    assert anls("paris.", ["paris"]) == pytest.approx(5 / 6)
    # raw lengths in the denominator: "abxy  " cleans to "abxy" (2 edits) but counts 6 chars -> 1 - 2/6
    assert anls("abxy  ", ["abcd"]) == pytest.approx(2 / 3)


def test_anls_best_answer_and_mean():
    # "cat": vs "dog" 3/3 -> 0; vs "cats" 1/4 -> 0.75; max = 0.75
    assert anls("cat", ["dog", "cats"]) == pytest.approx(0.75)
    # mean of 1.0, 0.75, 0.0
    assert mean_anls(["Paris", "cat", "zzz"], [["paris"], ["dog", "cats"], ["abc"]]) == pytest.approx(1.75 / 3)


# ----------------------------------------------------------------------------------------
# relaxed accuracy
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction, target, expected, why", [
    ("1000", "1,000", False, "'1,000' does not parse: exact match '1000' != '1,000'"),
    ("1,000", "1000", False, "'1,000' does not parse: exact match fails"),
    ("45%", "45", False, "45% -> 0.45 vs 45: off by 99 %"),
    ("45%", "0.45", True, "45% -> 0.45 == 0.45"),
    ("Yes.", "yes", False, "text: 'yes.' != 'yes'"),
    ("Yes", "yes", True, "text, case-insensitive"),
    ("1995.", "1995", True, "float('1995.') = 1995.0"),
    ("0", "0", True, "zero target -> exact match"),
    ("0.0", "0", False, "zero target -> exact match '0.0' != '0'"),
    ("0.01", "0", False, "zero target: no tolerance"),
    ("105", "100", True, "|105-100|/100 = 0.05 <= 0.05"),
    ("105.1", "100", False, "0.051 > 0.05"),
    ("95", "100", True, "|95-100|/100 = 0.05"),
    ("100", "95", False, "swapped: |100-95|/95 = 0.0526 > 0.05 (tolerance is relative to the target)"),
])
def test_relaxed_accuracy(prediction, target, expected, why):
    assert relaxed_accuracy(prediction, target) is expected, why
