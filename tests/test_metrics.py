"""The evaluation metrics against their published definitions (docs/reference: evaluation.md).

Every expected value below is worked out by hand from the definitions, in the comments; none
comes from running molora's own code.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molora.errors import ConfigError
from molora.eval import (NORMALIZER_VERSION, MetricError, anls, average_wer, mean_anls, normalize_english,
                         normalizer_name, relaxed_accuracy, rtfx, wer_details, word_error_rate)


# ----------------------------------------------------------------------------------------
# normaliser (both protocols; exact equality with the leaderboard: tests/test_open_asr_golden.py)
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
    assert normalize_english(text, protocol="open-asr") == expected   # rules both protocols share


def test_normalizer_names_the_code_it_reproduces():
    assert NORMALIZER_VERSION == normalizer_name("open-asr-2026")
    assert "huggingface/open_asr_leaderboard@d1e99b2" in normalizer_name("open-asr-2026")
    assert "huggingface/open_asr_leaderboard@228bb78" in normalizer_name("open-asr")
    with pytest.raises(ConfigError, match="unknown scoring protocol"):
        normalize_english("x", protocol="open-asr-2024")


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


def test_wer_algorithm_follows_the_protocol():
    # current protocol: kaldialign with merge_compounds=True -> a split compound is no error
    assert word_error_rate(["a white paper"], ["a whitepaper"]) == 0.0
    assert word_error_rate(["a whitepaper"], ["a white paper"]) == 0.0
    # classic protocol: jiwer alignment (evaluate's wer): "white paper" vs "whitepaper" = S1 D1 over 3 words
    d = wer_details(["a white paper"], ["a whitepaper"], protocol="open-asr")
    assert (d["substitutions"], d["deletions"], d["reference_words"]) == (1, 1, 3)
    assert d["wer"] == pytest.approx(200 / 3)


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


@pytest.mark.parametrize("prediction, answer, expected, why", [
    ("ß", "s", 0.5, "1 edit / max(len('SS'), len('S')) = 1/2 -> 0.5 (raw lengths would give 1/1 -> 0)"),
    ("ß", "ß", 1.0, "equal"),
    ("ﬃ", "f", 1 - 1 / 3, "'ﬃ'.upper() = 'FFI': 1 edit / 3"),
    ("ΐ", "ι", 1 - 1 / 3, "'ΐ'.upper() is three code points: 1 edit / 3"),
    ("straße", "strasse", 1 - 2 / 7, "2 edits / max(7, 7)"),
    ("İ", "i", 0.0, "lower('İ') is 'i' + U+0307: 1 edit / max(1, 1) -> 0"),
])
def test_anls_unicode_length_rule_of_the_official_script(prediction, answer, expected, why):
    # the official DocVQA script divides by max(len(gt.upper()), len(pred.upper())) of the raw strings
    assert anls(prediction, [answer]) == pytest.approx(expected), why


def _official_anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """The official DocVQA / InfographicVQA ANLS of one question, written here from the script's text
    (as lmms-eval carries it): textbook Levenshtein, not rapidfuzz."""
    def levenshtein(s1, s2):
        if len(s1) > len(s2):
            s1, s2 = s2, s1
        row = list(range(len(s1) + 1))
        for i2, c2 in enumerate(s2):
            new = [i2 + 1]
            for i1, c1 in enumerate(s1):
                new.append(row[i1] if c1 == c2 else 1 + min(row[i1], row[i1 + 1], new[-1]))
            row = new
        return row[-1]

    values = []
    for answer in answers:
        gt = " ".join(answer.strip().lower().split())
        det = " ".join(prediction.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(levenshtein(gt, det)) / float(length))
    result = 1 - min(values)
    return 0 if result < threshold else result


_UNICODE_TEXT = st.text(alphabet=st.one_of(st.sampled_from(list("aAbBsSß ẞﬁﬂﬃﬀŉΐΰİıſςσΣǅǆ\t\n ·.-'")),
                                            st.characters(codec="utf-8")), max_size=12)


@settings(max_examples=2000, deadline=None)
@given(_UNICODE_TEXT, st.lists(_UNICODE_TEXT, min_size=1, max_size=3))
def test_anls_equals_the_official_rule_on_unicode(prediction, answers):
    assert anls(prediction, answers) == _official_anls(prediction, answers)


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


def _reference_relaxed(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """relaxed_correctness of pix2struct / lmms-eval (lmms_eval/tasks/chartqa/utils.py), written here from its text."""
    def to_float(text):
        try:
            return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            return None

    p, t = to_float(prediction), to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= max_relative_change
    return prediction.lower() == target.lower()


_NUMBERISH = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.floats(-1e4, 1e4, allow_nan=False).map(lambda x: f"{x:.2f}"),
    st.floats(0, 100, allow_nan=False).map(lambda x: f"{x:g}%"),
    st.sampled_from(["1,000", "1995.", " 7 ", "7%%", "%", "1e3", "nan", "inf", "-0", "0.0", "0", "Yes", "yes.", "ÅÅ",
                     "ǅ", "ß", "SS", "", "١٢", "½", "IX", "1_000"]),
    st.text(max_size=6))


@settings(max_examples=3000, deadline=None)
@given(_NUMBERISH, _NUMBERISH)
def test_relaxed_accuracy_equals_the_reference_rule(prediction, target):
    assert relaxed_accuracy(prediction, target) == _reference_relaxed(prediction, target)
