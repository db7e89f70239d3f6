"""Synthetic preference pairs for DPO: chosen = the right answer, rejected = a plausible wrong one.

Items cycle over three sources, each drawn afresh (this corpus owns its media):

* ``document``: a page and one of its questions; rejected = another field of the same kind on
  the page (another price, another cell of the column, another row) or the answer with its
  number nudged (``$12.50`` -> ``$13.25``), or another name / city / shop;
* ``chart``: a chart and one of its questions; rejected = another category's value or name, a
  nudged number, or the opposite yes/no;
* ``speech``: a clip of a held-out-safe sentence (``sentences.split_sentences``) and the ASR
  prompt; rejected = the transcript with one word swapped for another of its class
  (colour for colour, digit for digit, ...).

Rows: ``{"id", "messages", "chosen", "rejected", "kind", "key"}`` (messages end with the user
turn; image questions carry the VQA suffix, speech the ASR prompt, as in VQA / ASR rows).
"""
from __future__ import annotations

import random
import re
import time
from pathlib import Path

from molora.prompts import ASR_PROMPT, VQA_SUFFIX
from molora.synthetic import charts, documents, sentences
from molora.synthetic.common import build_corpus, item_rng, parallel_map, resolve_sizes, write_jsonl, write_png
from molora.synthetic.draw import QA
from molora.synthetic.speech_corpus import synthesise_clip

__all__ = ["NAME", "VERSION", "SIZES", "SOURCES", "wrong_answer", "corrupt_transcript", "build"]

NAME = "preferences"
VERSION = "v1"
SIZES = {
    "default": {"train": 900, "dev": 90, "test": 90},
    "tiny": {"train": 6, "dev": 3, "test": 3},
}
SOURCES = ("document", "chart", "speech")

_WORD_CLASSES = (sentences.DIGITS, sentences.COLOURS, sentences.SIZES, tuple(sentences.OBJECTS),
                 tuple(sentences.OBJECTS.values()), tuple(sentences.VERBS), tuple(sentences.VERBS.values()),
                 sentences.PLACES, sentences.PREPOSITIONS)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _nudge(answer: str, rng: random.Random) -> str:
    """Change the last number in ``answer`` keeping its format (decimals, prefix, suffix)."""
    matches = list(_NUMBER.finditer(answer))
    if not matches:
        return answer
    m = matches[-1]
    text = m.group()
    if "." in text:
        decimals = len(text.split(".")[1])
        step = 10 ** -decimals
        cents = round(float(text) / step)
        new = max(1, cents + rng.choice((-1, 1)) * rng.randint(5, 60) * (5 if decimals == 2 else 1))
        new_text = f"{new * step:.{decimals}f}"
    else:
        v = int(text)
        delta = rng.randint(1, max(3, v // 4 if v > 8 else 3))
        new = v + delta if (v - delta < 0 or rng.random() < 0.5) else v - delta
        new_text = str(new).zfill(len(text)) if text.startswith("0") else str(new)
    return answer[:m.start()] + new_text + answer[m.end():]


def wrong_answer(qa: QA, alternatives: list[str], rng: random.Random) -> str:
    """A plausible wrong answer to ``qa``: one of ``alternatives`` (same kind of field) that is not
    an accepted answer, else the opposite yes/no, else the answer with its number nudged."""
    accepted = {a.strip().lower() for a in qa.answers}
    options = sorted({a for a in alternatives if a.strip().lower() not in accepted})
    if options:
        return rng.choice(options)
    first = qa.answers[0]
    if first in ("Yes", "No"):
        return "No" if first == "Yes" else "Yes"
    nudged = _nudge(first, rng)
    if nudged.strip().lower() not in accepted:
        return nudged
    return first + " " + str(rng.randint(2, 9))  # last resort, still wrong


def _document_alternatives(page: documents.Page, qa: QA) -> list[str]:
    fields = page.fields
    key = qa.key
    if key.startswith("price:") or key == "total":
        return [v for k, v in fields.items() if k.startswith("price:") or k == "total"]
    if key.startswith("cell:"):
        col = key.split(":")[2]
        return [v for k, v in fields.items() if k.startswith("cell:") and k.endswith(f":{col}")]
    if key.startswith("row:"):
        rows = sorted({k.split(":")[1] for k in fields if k.startswith("cell:")})
        return rows
    pools = {"name": [f"{f} {l}" for f in documents.FIRST[:6] for l in documents.LAST[:4]],
             "city": list(documents.CITIES), "shop": list(documents.SHOPS)}
    return pools.get(key, [])


def _chart_alternatives(chart: charts.Chart, qa: QA) -> list[str]:
    if qa.key.startswith("value:"):  # another category's value (the same format as the answer)
        return [str(v) for v in chart.data.values()]
    if qa.key in ("max", "min"):
        return list(chart.data)
    return []


def corrupt_transcript(text: str, rng: random.Random) -> str:
    """``text`` with one word replaced by another word of the same class (colour, digit, object...)."""
    words = text.split()
    spots = [(i, cls) for i, w in enumerate(words) for cls in _WORD_CLASSES if w in cls and len(cls) > 1]
    if not spots:
        return text + " " + rng.choice(sentences.COLOURS)
    i, cls = rng.choice(spots)
    words[i] = rng.choice([w for w in cls if w != words[i]])
    return " ".join(words)


def _image_prompt(image_rel: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image_rel},
                                         {"type": "text", "text": question + VQA_SUFFIX}]}]


def _item(out_dir: str, seed: int, split: str, index: int, sentence: str | None) -> dict:
    out = Path(out_dir)
    rng = item_rng(NAME, seed, split, index)
    source = SOURCES[index % len(SOURCES)]
    rid = f"{NAME}-{split}-{index:05d}"
    if source == "speech":
        rel = f"audio/{split}/{index:05d}.wav"
        synthesise_clip(out, rel, sentence, rng)
        messages = [{"role": "user", "content": [{"type": "audio", "audio": rel}, {"type": "text", "text": ASR_PROMPT}]}]
        return {"id": rid, "messages": messages, "chosen": sentence, "rejected": corrupt_transcript(sentence, rng),
                "kind": "speech", "key": "transcript"}
    rel = f"images/{split}/{index:05d}.png"
    if source == "document":
        page = documents.draw_document(rng)
        qa = rng.choice(page.qas)
        alternatives, kind = _document_alternatives(page, qa), f"document/{page.kind}"
    else:
        page = charts.draw_chart(rng)
        qa = rng.choice(page.qas)
        alternatives, kind = _chart_alternatives(page, qa), f"chart/{page.chart_type}"
    write_png(out / rel, page.image)
    return {"id": rid, "messages": _image_prompt(rel, qa.question), "chosen": qa.answers[0],
            "rejected": wrong_answer(qa, alternatives, rng), "kind": kind, "key": qa.key}


def build(root=None, seed: int = 0, sizes: dict[str, int] | str = "default", *, workers: int | None = None,
          force: bool = False, log=None) -> dict[str, Path]:
    """Build (or reuse) the preference corpus; returns ``{split: manifest path}``."""
    tag, sizes = resolve_sizes(sizes, SIZES)

    def builder(out: Path) -> dict:
        n_speech = {split: len(range(2, n, len(SOURCES))) for split, n in sizes.items()}
        texts = sentences.split_sentences(n_speech, seed)
        manifests, counts, t0 = {}, {}, time.perf_counter()
        for split, n in sizes.items():
            it = iter(texts[split])
            items = [(str(out), seed, split, i, next(it) if SOURCES[i % len(SOURCES)] == "speech" else None)
                     for i in range(n)]
            rows = parallel_map(_item, items, workers)
            counts[split] = write_jsonl(out / f"{split}.jsonl", rows)
            manifests[split] = f"{split}.jsonl"
        return {"manifests": manifests, "counts": counts,
                "seconds_per_item": round((time.perf_counter() - t0) / max(sum(counts.values()), 1), 4)}

    return build_corpus(NAME, seed, VERSION, tag, root, sizes, builder, force=force, log=log)
