"""The Open ASR leaderboard's English text normaliser, per scoring protocol, pinned and named.

``normalize_english(text, protocol="open-asr-2026")`` gives what the leaderboard's
``EnglishTextNormalizer`` gives at the commit the protocol reproduces (surrounding whitespace
stripped: it never changes a word, and the leaderboard's own filter strips it too). The steps,
in order, are molora's code; what each step *matches* is data, read by
``scripts/open_asr_reference.py`` from the leaderboard's normaliser at that commit and stored in
``molora/eval/protocol_data/<protocol>.json`` (with the repository and commit):

1. lowercase; drop ``[...]`` / ``<...>`` spans and ``(...)`` spans;
2. drop fillers (the protocol's filler pattern: hmm, uh, um...; "huh", "ah" ... since 2026);
3. join a space before an apostrophe ("don 't" -> "don't"); expand contractions and titles with
   the protocol's ordered replacer table ("won't" -> "will not", "mr" -> "mister"; since 2026 "'s"
   becomes " is" only after it/he/she/what/..., so "john's" -> "john s");
4. remove commas between digits; drop periods not followed by a digit;
5. replace symbols, punctuation and marks by spaces and drop diacritics, keeping ``. % $ ¢ € £``
   (transformers' Whisper ``remove_symbols_and_diacritics``, identical to the leaderboard's);
6. (2026) the compound table ("wi fi" -> "wifi", "o k" -> "okay", "a m" -> "am");
7. spelled numbers to digits (transformers' Whisper ``EnglishNumberNormalizer``, identical to the
   leaderboard's): "twenty five" -> "25", "$20 million" -> "$20000000", "fifty percent" -> "50%";
8. British -> American spelling map (word by word); (2026) the name map ("jon" -> "john");
9. (2026) collapse runs of single letters/digits: "b b c" -> "bbc", "5 g" -> "5g"; a run holding
   "a" or "i" needs three members ("a b" stays, "i a m" -> "iam");
10. drop currency signs / periods not before a digit and "%" not after one; collapse whitespace.

``normalizer_name(protocol)`` names the code reproduced (repository@commit); every summary carries it.
"""
from __future__ import annotations

import re
from functools import lru_cache

from .protocols import DEFAULT_PROTOCOL, get_protocol, normalizer_rules

__all__ = ["normalize_english", "normalizer_name", "EnglishNormalizer", "NORMALIZER_VERSION"]

_BRACKETS = re.compile(r"[<\[][^>\]]*[>\]]")
_PARENTHESES = re.compile(r"\(([^)]+?)\)")
_SPACE_APOSTROPHE = re.compile(r"\s+'")
_DIGIT_COMMA = re.compile(r"(\d),(\d)")
_PERIOD = re.compile(r"\.([^0-9]|$)")
_LONE_SIGN = re.compile(r"[.$¢€£]([^0-9])")
_LONE_PERCENT = re.compile(r"([^0-9])%")
_SPACES = re.compile(r"\s+")
_KEEP = ".%$¢€£"   # symbols kept through step 5 because numbers need them


def collapse_spelled_acronyms(words: list[str]) -> list[str]:
    """Step 9: join each maximal run of one-character alphanumeric words into one word, when the run has
    at least two members, or at least three if "a" or "i" is among them."""
    out: list[str] = []
    run: list[str] = []

    def flush():
        if len(run) >= (3 if ("a" in run or "i" in run) else 2):
            out.append("".join(run))
        else:
            out.extend(run)
        run.clear()

    for w in words:
        if len(w) == 1 and w.isalnum():
            run.append(w)
        else:
            flush()
            out.append(w)
    flush()
    return out


class EnglishNormalizer:
    """One protocol's normaliser: the fixed steps of the module docstring over that protocol's tables."""

    def __init__(self, rules: dict):
        from transformers.models.whisper.english_normalizer import EnglishNumberNormalizer

        self.fillers = re.compile(rules["fillers"])
        self.replacers = [(re.compile(p), r) for p, r in rules["replacers"]]
        self.compounds = [(re.compile(p), r) for p, r in rules.get("compounds", [])]
        self.spelling = dict(rules["spelling"])
        self.names = dict(rules.get("names", {}))
        self.collapse_acronyms = bool(rules.get("collapse_acronyms", False))
        self.numbers = EnglishNumberNormalizer()

    def __call__(self, text: str) -> str:
        from transformers.models.whisper.english_normalizer import remove_symbols_and_diacritics

        s = text.lower()
        s = _PARENTHESES.sub("", _BRACKETS.sub("", s))
        s = self.fillers.sub("", s)
        s = _SPACE_APOSTROPHE.sub("'", s)
        for pattern, replacement in self.replacers:
            s = pattern.sub(replacement, s)
        s = _PERIOD.sub(r" \1", _DIGIT_COMMA.sub(r"\1\2", s))
        s = remove_symbols_and_diacritics(s, keep=_KEEP)
        for pattern, replacement in self.compounds:
            s = pattern.sub(replacement, s)
        s = self.numbers(s)
        # each table maps whole words; a mapped value may hold a space, so split again after each
        words = " ".join(self.spelling.get(w, w) for w in s.split()).split()
        if self.names:
            words = " ".join(self.names.get(w, w) for w in words).split()
        if self.collapse_acronyms:
            words = collapse_spelled_acronyms(words)
        s = _LONE_PERCENT.sub(r"\1 ", _LONE_SIGN.sub(r" \1", " ".join(words)))
        return _SPACES.sub(" ", s).strip()


@lru_cache(maxsize=None)
def _normalizer(protocol: str) -> EnglishNormalizer:
    return EnglishNormalizer(normalizer_rules(protocol))


def normalize_english(text: str, protocol: str = DEFAULT_PROTOCOL) -> str:
    """Normalise one English transcript as the Open ASR leaderboard does under ``protocol``.

    ``normalize_english("Twenty five colours, uh, [noise] won't fade.")`` -> ``"25 colors will not fade"``.
    A text made only of bracketed spans or fillers gives "".
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_english expects a string, got {type(text).__name__}")
    return _normalizer(protocol)(text)


def normalizer_name(protocol: str = DEFAULT_PROTOCOL) -> str:
    """``"<repository>@<commit> EnglishTextNormalizer"``: the code ``protocol``'s normaliser reproduces."""
    src = get_protocol(protocol).source
    return f"{src['repository']}@{src['commit'][:7]} EnglishTextNormalizer (protocol {protocol})"


NORMALIZER_VERSION = normalizer_name(DEFAULT_PROTOCOL)
