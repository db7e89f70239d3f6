"""The everyday-English corpus: text, speech and tokenizer training data from ``everyday.everyday_sentences``.

    from molora.synthetic.everyday_corpus import build
    build(root, seed=0, sizes="default")   # {split: Path to an ASR JSONL manifest}

Each clip speaks one sentence with the espeak-ng library that ``espeakng-loader`` ships (``speech.speak``, so no
espeak-ng program is needed) in a style drawn from its own seed: an English voice and variant, 120-190 words per
minute, a pitch, and one of four sample rates (16, 22.05, 24, 44.1 kHz: the audio front end resamples, so the
conformer meets all of them). Rows: ``{"id", "audio", "text", "duration", "voice", "rate", "pitch",
"sampling_rate"}`` (``text`` as written: the transcript the model learns). Splits use disjoint seeds of the
generator; ``benchmarks/data/everyday_heldout.txt`` (hand-written) is in none of them.
"""
from __future__ import annotations

import random
from pathlib import Path

from molora.synthetic.common import build_corpus, item_rng, read_jsonl, resolve_sizes, write_wav
from molora.synthetic.everyday import everyday_sentences
from molora.synthetic.speech import speak
from molora.synthetic.speech_corpus import speak_splits

__all__ = ["NAME", "VERSION", "SIZES", "VOICES", "VARIANTS", "RATE_RANGE", "PITCH_RANGE", "SAMPLE_RATES",
           "draw_style", "split_texts", "frequency_text", "train_sentences", "tokenizer_texts", "build", "read_jsonl"]

NAME = "everyday"
VERSION = "v1"
SIZES = {"default": {"train": 20000, "dev": 300}, "tiny": {"train": 8, "dev": 2}}
VOICES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
VARIANTS = ("", "", "+m3", "+f2", "+f4", "+m1")
RATE_RANGE = (120, 190)   # words per minute
PITCH_RANGE = (35, 70)
SAMPLE_RATES = (16000, 22050, 24000, 44100)
SPLIT_SEEDS = {"train": 0, "dev": 1}   # added to 1000 * seed: a split's sentences come from its own stream


def draw_style(rng: random.Random) -> dict:
    return {"voice": rng.choice(VOICES) + rng.choice(VARIANTS), "rate": rng.randint(*RATE_RANGE),
            "pitch": rng.randint(*PITCH_RANGE), "sampling_rate": rng.choice(SAMPLE_RATES)}


def split_texts(sizes: dict[str, int], seed: int = 0) -> dict[str, list[str]]:
    """Sentences per split (train / dev streams of the generator; no sentence of dev is in train)."""
    out = {}
    for split, n in sizes.items():
        out[split] = everyday_sentences(n, seed=1000 * seed + SPLIT_SEEDS.get(split, 7))
    if "dev" in out and "train" in out:
        train = set(out["train"])
        out["dev"] = [s for s in out["dev"] if s not in train]
    return out


def frequency_text(total_words: int = 1_000_000, top: int = 30000) -> list[str]:
    """English words repeated in proportion to their wordfreq frequency (``total_words`` in all), one string per
    word: alongside the generated sentences (whose open-class words are drawn flatter than real text) this
    gives the tokenizer's BPE the real frequencies of everyday words."""
    import wordfreq

    out = []
    for w in wordfreq.top_n_list("en", top):
        n = round(wordfreq.word_frequency(w, "en") * total_words)
        if n and w.isascii() and w.replace("'", "").isalpha():
            out.append((" " + w) * n)
    return out


def train_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of the train stream (the speech corpus's train split is its first sentences)."""
    return everyday_sentences(n, seed=1000 * seed + SPLIT_SEEDS["train"])


def tokenizer_texts(n_sentences: int = 100_000, seed: int = 0) -> list[str]:
    """What the everyday tokenizer learns from: generated sentences (train stream) + ``frequency_text``."""
    return train_sentences(n_sentences, seed) + frequency_text()


def _clip(out_dir: str, seed: int, split: str, index: int, text: str) -> dict:
    style = draw_style(item_rng(NAME, seed, split, index))
    rel = f"audio/{split}/{index:06d}.wav"
    audio = speak(text, style["voice"], style["rate"], style["pitch"], sampling_rate=style["sampling_rate"])
    duration = write_wav(Path(out_dir) / rel, audio, style["sampling_rate"])
    return {"id": f"{NAME}-{split}-{index:06d}", "audio": rel, "text": text, "duration": duration, **style}


def build(root=None, seed: int = 0, sizes: dict[str, int] | str = "default", *,
          workers: int | None = None, force: bool = False, log=None) -> dict[str, Path]:
    """Build (or reuse) the everyday speech corpus; returns ``{split: manifest path}``."""
    tag, sizes = resolve_sizes(sizes, SIZES)

    def builder(out: Path) -> dict:
        return {**speak_splits(out, split_texts(sizes, seed), _clip, seed, workers),
                "voices": list(VOICES), "variants": list(VARIANTS), "rate_range": list(RATE_RANGE),
                "pitch_range": list(PITCH_RANGE), "sample_rates": list(SAMPLE_RATES)}

    return build_corpus(NAME, seed, VERSION, tag, root, sizes, builder, force=force, log=log)
