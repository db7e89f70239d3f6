"""Synthetic vision-speech corpus: a question about a drawn chart or document, spoken by espeak-ng.

Each row is a chat: the user turn holds the image and the spoken question (no text), the
assistant turn the answer. Even items are documents, odd items charts; the question is one of
the page's own (see ``documents`` / ``charts``), so the answer is right by construction.

Output: ``images/<split>/<index>.png``, ``audio/<split>/<index>.wav`` and chat rows
``{"id", "messages", "question", "answers", "kind", "key", "voice", "rate", "pitch"}``
(``question`` / ``answers`` are for evaluation; the trainer reads ``messages``).
"""
from __future__ import annotations

import time
from pathlib import Path

from molora.synthetic import charts, documents
from molora.synthetic.common import build_corpus, item_rng, parallel_map, resolve_sizes, write_jsonl, write_png
from molora.synthetic.speech_corpus import synthesise_clip

__all__ = ["NAME", "VERSION", "SIZES", "make_item", "build"]

NAME = "joint"
VERSION = "v1"
SIZES = {
    "default": {"train": 1000, "dev": 100, "test": 100},
    "tiny": {"train": 4, "dev": 2, "test": 2},
}


def make_item(out_dir: Path, seed: int, split: str, index: int) -> dict:
    """Draw the page, pick a question, speak it, write both files; return the chat row."""
    rng = item_rng(NAME, seed, split, index)
    if index % 2 == 0:
        page = documents.draw_document(rng, documents.KINDS[(index // 2) % len(documents.KINDS)])
        kind, qa = f"document/{page.kind}", rng.choice(page.qas)
    else:
        page = charts.draw_chart(rng, charts.CHART_TYPES[(index // 2) % len(charts.CHART_TYPES)])
        kind, qa = f"chart/{page.chart_type}", rng.choice(page.qas)
    image_rel = f"images/{split}/{index:05d}.png"
    audio_rel = f"audio/{split}/{index:05d}.wav"
    write_png(out_dir / image_rel, page.image)
    style = synthesise_clip(out_dir, audio_rel, qa.question, rng)
    return {"id": f"{NAME}-{split}-{index:05d}",
            "messages": [{"role": "user", "content": [{"type": "image", "image": image_rel},
                                                      {"type": "audio", "audio": audio_rel}]},
                         {"role": "assistant", "content": qa.answers[0]}],
            "question": qa.question, "answers": qa.answers, "kind": kind, "key": qa.key,
            "voice": style["voice"], "rate": style["rate"], "pitch": style["pitch"], "duration": style["duration"]}


def _item(out_dir: str, seed: int, split: str, index: int) -> dict:
    return make_item(Path(out_dir), seed, split, index)


def build(root=None, seed: int = 0, sizes: dict[str, int] | str = "default", *, workers: int | None = None,
          force: bool = False, log=None) -> dict[str, Path]:
    """Build (or reuse) the joint corpus; returns ``{split: manifest path}``."""
    tag, sizes = resolve_sizes(sizes, SIZES)

    def builder(out: Path) -> dict:
        manifests, counts, t0 = {}, {}, time.perf_counter()
        for split, n in sizes.items():
            rows = parallel_map(_item, [(str(out), seed, split, i) for i in range(n)], workers)
            counts[split] = write_jsonl(out / f"{split}.jsonl", rows)
            manifests[split] = f"{split}.jsonl"
        return {"manifests": manifests, "counts": counts,
                "seconds_per_item": round((time.perf_counter() - t0) / max(sum(counts.values()), 1), 4)}

    return build_corpus(NAME, seed, VERSION, tag, root, sizes, builder, force=force, log=log)
