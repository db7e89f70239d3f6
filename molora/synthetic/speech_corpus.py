"""Synthetic ASR corpus: closed-vocabulary sentences spoken by espeak-ng.

Each clip gets one sentence (no sentence is in two splits, see ``sentences.sentence_split``) and
a speaking style drawn from its own seed: an English voice, a voice variant, a rate and a pitch.
Output: ``audio/<split>/<index>.wav`` (16 kHz, 16-bit PCM) and ``<split>.jsonl`` ASR rows
``{"id", "audio", "text", "duration", "voice", "rate", "pitch"}`` (paths relative to the manifest).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from molora.synthetic.common import (SAMPLING_RATE, build_corpus, item_rng, parallel_map, resolve_sizes,
                                     write_jsonl, write_wav)
from molora.synthetic.sentences import split_sentences
from molora.synthetic.speech import speak

__all__ = ["NAME", "VERSION", "SIZES", "VOICES", "VARIANTS", "RATE_RANGE", "PITCH_RANGE", "draw_style",
           "synthesise_clip", "speak_splits", "build"]

NAME = "speech"
VERSION = "v1"
SIZES = {
    "default": {"train": 3000, "dev": 200, "test": 200},
    "tiny": {"train": 12, "dev": 4, "test": 4},
}
VOICES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland")
VARIANTS = ("", "+m3", "+f4")
RATE_RANGE = (140, 200)   # words per minute
PITCH_RANGE = (35, 65)    # espeak 0..99


def draw_style(rng: random.Random) -> dict:
    """``{"voice", "rate", "pitch"}`` for one clip."""
    return {"voice": rng.choice(VOICES) + rng.choice(VARIANTS),
            "rate": rng.randint(*RATE_RANGE), "pitch": rng.randint(*PITCH_RANGE)}


def synthesise_clip(out_dir: Path, rel: str, text: str, rng: random.Random) -> dict:
    """Speak ``text`` in a style drawn from ``rng``; write ``out_dir/rel``; return the style and duration."""
    style = draw_style(rng)
    audio = speak(text, sampling_rate=SAMPLING_RATE, **style)
    duration = write_wav(out_dir / rel, audio)
    return {**style, "duration": duration}


def _clip(out_dir: str, seed: int, split: str, index: int, text: str) -> dict:
    rel = f"audio/{split}/{index:05d}.wav"
    info = synthesise_clip(Path(out_dir), rel, text, item_rng(NAME, seed, split, index))
    return {"id": f"{NAME}-{split}-{index:05d}", "audio": rel, "text": text, "duration": info["duration"],
            "voice": info["voice"], "rate": info["rate"], "pitch": info["pitch"]}


def speak_splits(out: Path, texts: dict[str, list[str]], clip, seed: int, workers: int | None) -> dict:
    """Speak every split's sentences with ``clip(out, seed, split, index, text) -> row`` (in parallel) and write
    ``<split>.jsonl``; returns the corpus.json fields ``manifests``, ``counts`` and ``seconds_per_item``."""
    manifests, counts, t0 = {}, {}, time.perf_counter()
    for split, sents in texts.items():
        rows = parallel_map(clip, [(str(out), seed, split, i, s) for i, s in enumerate(sents)], workers)
        counts[split] = write_jsonl(out / f"{split}.jsonl", rows)
        manifests[split] = f"{split}.jsonl"
    return {"manifests": manifests, "counts": counts,
            "seconds_per_item": round((time.perf_counter() - t0) / max(sum(counts.values()), 1), 4)}


def build(root=None, seed: int = 0, sizes: dict[str, int] | str = "default", *,
          workers: int | None = None, force: bool = False, log=None) -> dict[str, Path]:
    """Build (or reuse) the speech corpus; returns ``{split: manifest path}``."""
    tag, sizes = resolve_sizes(sizes, SIZES)

    def builder(out: Path) -> dict:
        return {**speak_splits(out, split_sentences(sizes, seed), _clip, seed, workers),
                "voices": list(VOICES), "variants": list(VARIANTS), "rate_range": list(RATE_RANGE),
                "pitch_range": list(PITCH_RANGE), "sampling_rate": SAMPLING_RATE}

    return build_corpus(NAME, seed, VERSION, tag, root, sizes, builder, force=force, log=log)

