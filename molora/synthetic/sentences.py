"""A closed vocabulary and a seeded generator of short English sentences (3-8 words).

Sentences are lower case with no punctuation, so a transcript is exactly what the leaderboard
normaliser leaves of it. ``split_sentences`` gives each split distinct sentences; which split a
sentence belongs to is fixed by a hash of (seed, sentence), so no sentence appears in two splits.
"""
from __future__ import annotations

import hashlib
import random

__all__ = ["VOCABULARY", "DIGITS", "COLOURS", "OBJECTS", "VERBS", "generate_sentence", "generate_sentences",
           "split_sentences", "sentence_split", "words"]

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown", "grey")
SIZES = ("big", "small", "old", "new", "long", "short", "soft", "heavy")
# singular -> plural
OBJECTS = {
    "cat": "cats", "dog": "dogs", "bird": "birds", "fish": "fish", "horse": "horses", "cup": "cups",
    "box": "boxes", "ball": "balls", "book": "books", "car": "cars", "hat": "hats", "pen": "pens",
    "key": "keys", "chair": "chairs", "table": "tables", "lamp": "lamps", "bag": "bags", "tree": "trees",
    "door": "doors", "phone": "phones", "shoe": "shoes", "clock": "clocks", "bottle": "bottles",
    "apple": "apples", "cake": "cakes", "boat": "boats", "train": "trains", "coat": "coats",
    "window": "windows", "flower": "flowers",
}
PLACES = ("house", "garden", "kitchen", "room", "park", "shop", "street", "school")
SUBJECTS = ("i", "you", "we", "they", "the man", "the woman", "the boy", "the girl", "my friend",
            "the teacher")
SUBJECTS_3RD = ("he", "she", "the man", "the woman", "the boy", "the girl", "my friend", "the teacher")
# base form -> third person singular
VERBS = {
    "see": "sees", "take": "takes", "move": "moves", "find": "finds", "hold": "holds", "want": "wants",
    "like": "likes", "have": "has", "open": "opens", "pull": "pulls", "push": "pushes", "drop": "drops",
    "buy": "buys", "sell": "sells", "paint": "paints", "carry": "carries", "need": "needs", "clean": "cleans",
}
PREPOSITIONS = ("on", "in", "under", "near", "behind", "by")
TIMES = ("today", "now", "again", "tonight", "every day", "this morning")
DETERMINERS = ("the", "a", "my", "your", "this", "that")
_FUNCTION_WORDS = ("is", "are", "there", "of", "and", "to", "with")


def _vocabulary() -> tuple[str, ...]:
    vocab: set[str] = set()
    for group in (DIGITS, COLOURS, SIZES, PLACES, PREPOSITIONS, TIMES, DETERMINERS, _FUNCTION_WORDS,
                  SUBJECTS, SUBJECTS_3RD, tuple(OBJECTS), tuple(OBJECTS.values()), tuple(VERBS),
                  tuple(VERBS.values())):
        for phrase in group:
            vocab.update(phrase.split())
    return tuple(sorted(vocab))


VOCABULARY: tuple[str, ...] = _vocabulary()


def words(sentence: str) -> list[str]:
    return sentence.split()


def _np(rng: random.Random, plural_count: str | None = None) -> str:
    """A noun phrase: 'the big red cup' / 'three green boxes'."""
    noun = rng.choice(tuple(OBJECTS))
    mods = []
    if rng.random() < 0.3:
        mods.append(rng.choice(SIZES))
    if rng.random() < 0.6:
        mods.append(rng.choice(COLOURS))
    if plural_count is not None:
        return " ".join([plural_count, *mods, OBJECTS[noun]])
    return " ".join([rng.choice(DETERMINERS), *mods, noun])


def _count(rng: random.Random) -> str:
    return rng.choice(DIGITS[2:])  # two..nine (plural)


def _verb(rng: random.Random, subject: str) -> str:
    base = rng.choice(tuple(VERBS))
    third = subject in SUBJECTS_3RD
    return VERBS[base] if third else base


def generate_sentence(rng: random.Random) -> str:
    """One sentence of 3-8 words from the closed vocabulary."""
    while True:
        kind = rng.randrange(6)
        if kind == 0:  # the girl sees the red cup today
            subj = rng.choice(SUBJECTS + ("he", "she"))
            s = f"{subj} {_verb(rng, subj)} {_np(rng)}"
            if rng.random() < 0.4:
                s += " " + rng.choice(TIMES)
        elif kind == 1:  # we buy three green apples
            subj = rng.choice(SUBJECTS + ("he", "she"))
            s = f"{subj} {_verb(rng, subj)} {_np(rng, _count(rng))}"
        elif kind == 2:  # the red cup is on the table
            s = f"{_np(rng)} is {rng.choice(PREPOSITIONS)} the {rng.choice(tuple(OBJECTS) + PLACES)}"
        elif kind == 3:  # there are five cats in the garden
            s = f"there are {_np(rng, _count(rng))} {rng.choice(PREPOSITIONS)} the {rng.choice(PLACES)}"
        elif kind == 4:  # the cup is red
            noun = rng.choice(tuple(OBJECTS))
            s = f"{rng.choice(DETERMINERS)} {noun} is {rng.choice(COLOURS + SIZES)}"
            if rng.random() < 0.5:
                s += f" and {rng.choice(COLOURS + SIZES)}"
        else:  # four two seven nine (a digit string)
            s = " ".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 6)))
        if 3 <= len(s.split()) <= 8:
            return s


def generate_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences, deterministic for ``seed`` (a prefix of a longer list for the same seed)."""
    rng = random.Random(f"molora-sentences-{seed}")
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        s = generate_sentence(rng)
        attempts += 1
        if s not in seen:
            seen.add(s)
            out.append(s)
        elif attempts > 50 * (n + 100):
            raise ValueError(f"cannot draw {n} distinct sentences from the grammar")
    return out


# A sentence's split is a function of the sentence and the seed alone (a hash bucket), so every
# corpus that speaks sentences (speech, joint, preferences) agrees on which ones are held out,
# whatever sizes it asks for.
HELD_OUT_BUCKETS = {"test": 0, "dev": 1}
N_BUCKETS = 20  # test 5%, dev 5%, train 90% of the grammar's sentences


def sentence_split(sentence: str, seed: int = 0) -> str:
    h = int.from_bytes(hashlib.sha256(f"{seed}/{sentence}".encode()).digest()[:8], "big") % N_BUCKETS
    for split, bucket in HELD_OUT_BUCKETS.items():
        if h == bucket:
            return split
    return "train"


def split_sentences(sizes: dict[str, int], seed: int = 0) -> dict[str, list[str]]:
    """Distinct sentences per split, e.g. ``{"train": 3000, "dev": 200, "test": 200}``; a sentence
    belongs to the split ``sentence_split`` gives it, so no two splits (of any corpus built with
    the same seed) share a sentence. Splits other than train/dev/test draw from train's bucket."""
    rng = random.Random(f"molora-sentences-{seed}")
    want = {split: int(n) for split, n in sizes.items()}
    out: dict[str, list[str]] = {split: [] for split in sizes}
    seen: set[str] = set()
    attempts, budget = 0, 200 * (sum(want.values()) + 100)
    while any(len(out[s]) < want[s] for s in want):
        s = generate_sentence(rng)
        attempts += 1
        if attempts > budget:
            raise ValueError(f"cannot draw {want} distinct sentences from the grammar")
        if s in seen:
            continue
        seen.add(s)
        bucket = sentence_split(s, seed)
        targets = [bucket] if bucket != "train" else ["train"] + [k for k in want if k not in ("train", "dev", "test")]
        for split in targets:
            if split in want and len(out[split]) < want[split]:
                out[split].append(s)
                break
    return out
