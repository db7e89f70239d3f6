"""The pretraining's own training rows besides the pages (``reading.py``): text conversations from the
corpora, VQA rows, look-up drills, and ``alongside`` (other rows kept in a phase at a share)."""
from __future__ import annotations

from molora.data.manifest import Sample, read_manifest
from molora.synthetic.lookup import lookup_conversations
from molora.synthetic.sentences import generate_sentences, sentence_split


def alongside(main: list, extras: list[tuple[list, int]]) -> list:
    """``main`` plus rows of each ``(pool, percent)`` so that the pool makes up about ``percent`` %
    of the result (pool rows reused in turn when the pool is small). Used to keep look-up drills and
    speech rows in the crops / vision phases, which otherwise wear those skills away."""
    total = sum(pct for pool, pct in extras if pool)
    if total >= 100:
        raise ValueError(f"extra rows would make up {total}% of the phase: keep the shares under 100")
    out = list(main)
    for pool, pct in extras:
        if pool and pct:
            k = round(len(main) * pct / (100 - total))
            out += [pool[i % len(pool)] for i in range(k)]
    return out


def _strip_media(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        c = m["content"]
        if isinstance(c, list):
            c = " ".join(p.get("text", "") for p in c if p.get("type") == "text").strip()
        out.append({"role": m["role"], "content": c})
    return out


def text_conversations(corpora: dict, seed: int) -> list[list[dict]]:
    """Text-only conversations from every training manifest, plus bare sentences."""
    convs: list[list[dict]] = []
    for name in ("speech", "documents", "charts", "joint"):
        for s in read_manifest(corpora[name]["train"]):
            convs.append(_strip_media(s.messages))
    sents = [s for s in generate_sentences(4000, seed=seed + 7) if sentence_split(s, seed) == "train"]
    convs += [[{"role": "assistant", "content": s}] for s in sents]
    return convs


def image_row(image, prompt: str, answers: list[str], source: str) -> Sample:
    """One VQA training row: ``image`` + ``prompt`` -> ``answers[0]`` (all of ``answers`` accepted)."""
    return Sample([{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]},
                   {"role": "assistant", "content": answers[0]}], "vqa", source, answers=list(answers))


def drill_rows(n: int, seed: int) -> list[Sample]:
    """``n`` look-up drill conversations (``lookup_conversations``) as text-only training rows."""
    return [Sample(c, "chat", f"pretrain-lookup:{seed}:{i}") for i, c in enumerate(lookup_conversations(n, seed))]
