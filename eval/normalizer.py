"""The Open ASR leaderboard's English text normaliser, pinned and named.

``normalize_english`` is transformers' Whisper ``EnglishTextNormalizer``
(``transformers.models.whisper.english_normalizer``) built with the British -> American
spelling map ``english.json`` shipped inside the pinned ``whisper-normalizer`` package (the
same map OpenAI's Whisper ships). Nothing here re-implements a rule: the rules are the
transformers code, the data is the whisper-normalizer file.

What it does, in order (see the transformers source for the exact regexes): lowercase; drop
spans in ``[...]``, ``<...>`` and ``(...)``; drop the fillers hmm/mm/mhm/mmm/uh/um; expand
contractions ("won't" -> "will not", "'s" -> " is") and titles ("mr" -> "mister"); remove
commas between digits; drop periods not followed by a digit; strip symbols and diacritics
(keeping . % $ and currency signs next to numbers); spell numbers as digits ("twenty five" ->
"25", "one thousand two hundred" -> "1200"); map British spellings to American ("colour" ->
"color"); collapse whitespace. The result has no leading/trailing spaces.

``NORMALIZER_VERSION`` names both packages and their versions; every evaluation summary
carries it, because the normaliser version alone moves WER by tenths of a point.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata, resources

__all__ = ["normalize_english", "NORMALIZER_VERSION", "english_spelling_map"]

_SPELLING_PACKAGE = "whisper_normalizer"
_SPELLING_FILE = "normalizers/english.json"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover - both are hard dependencies
        return "not installed"


NORMALIZER_VERSION = (f"transformers {_version('transformers')} EnglishTextNormalizer + "
                      f"whisper-normalizer {_version('whisper-normalizer')} english.json")


@lru_cache(maxsize=1)
def english_spelling_map() -> dict[str, str]:
    """The British -> American spelling map shipped by ``whisper-normalizer`` (``english.json``)."""
    path = resources.files(_SPELLING_PACKAGE).joinpath(_SPELLING_FILE)
    with path.open("r", encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=1)
def _normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(english_spelling_map())


def normalize_english(text: str) -> str:
    """Normalise one English transcript as the Open ASR leaderboard does (see module docstring).

    ``normalize_english("Twenty five colours, uh, [noise] won't fade.")`` ->
    ``"25 colors will not fade"``. A text made only of bracketed spans or fillers gives "".
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_english expects a string, got {type(text).__name__}")
    return _normalizer()(text).strip()
