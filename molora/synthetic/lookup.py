"""Text look-up drills for pretraining the tiny backbone: every document and chart question is an
in-context look-up ("Name: Paul Hill ... What is the name on the form?"), and a small LM pretrained
on plain text does not learn look-up from a few thousand answer tokens. Three kinds of rows, all
text-only chat conversations (no media), deterministic for a seed:

- ``page``: a freshly drawn page given as text (documents in reading order, charts as a table
  ``category value`` per line), one of its questions, its first accepted answer;
- ``keys``: a short list of ``Key: value`` pairs and "What is the <key>?" (or the reverse
  question) -- associative recall with nothing else to learn;
- ``repeat``: a random string of words and numbers, "Repeat the text." -- every answer token is a
  copy, so induction heads form quickly.

Measured from the session-3 tiny backbone on ``scripts/probe_text_lookup.py``'s held-out 304
questions (26 right before; one core): ``--drills --batch 32 --lr 1e-3 --train-steps 6000
--eval-every 1500`` reached 67, 76, 115 and 133 / 304 exact after 1500, 3000, 4500 and 6000 steps
(777 s of training); an earlier experiment with ``page`` rows alone reached 34 after 1500 steps and 41 after
3000.
"""
from __future__ import annotations

import random

from molora.prompts import VQA_SUFFIX

__all__ = ["KINDS", "text_lines", "page_text", "page_as_text", "drill_row", "lookup_conversations"]

KINDS = ("page", "keys", "repeat")
PROMPT = "{text}\n{question}" + VQA_SUFFIX
_WORDS = ("name age date phone total item qty price city value shop rain cake milk soap rome paris oslo "
          "figs pears plums apples lemons coffee butter soup tea bread rice fish eggs visitor pass stock "
          "sales points year month team fruit share order code room email").split()


def text_lines(labels) -> list[list]:
    """Labels grouped into lines by their vertical centre (within 0.6 of the font size), top to
    bottom, each line left to right."""
    centre = lambda lab: (lab.box[1] + lab.box[3]) / 2  # noqa: E731
    lines: list[list] = []
    for lab in sorted(labels, key=lambda lab: (centre(lab), lab.box[0])):
        if lines and abs(centre(lab) - centre(lines[-1][0])) <= 0.6 * lab.size:
            lines[-1].append(lab)
        else:
            lines.append([lab])
    return [sorted(line, key=lambda lab: lab.box[0]) for line in lines]


def page_text(labels) -> str:
    """A page's text in reading order (``text_lines``)."""
    return "\n".join(" ".join(lab.text for lab in line) for line in text_lines(labels))


def page_as_text(page) -> str:
    """A drawn page as text: a chart (it has ``data``) as its title and one ``category value`` line
    per category (chart-to-table), a document in reading order."""
    if hasattr(page, "data"):
        return "\n".join([page.theme.title] + [f"{c} {v}" for c, v in page.data.items()])
    return page_text(page.labels)


def _value(rng: random.Random) -> str:
    k = rng.random()
    if k < 0.4:
        return str(rng.randint(1, 999))
    if k < 0.6:
        return f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}"
    if k < 0.8:
        return rng.choice(_WORDS).title()
    return f"{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"


def _chat(user: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _keys_row(rng: random.Random) -> list[dict]:
    keys = rng.sample(_WORDS, rng.randint(3, 8))
    values = [_value(rng) for _ in keys]
    sep = rng.choice((": ", " ", " = "))
    text = rng.choice((" ", "\n", " | ")).join(f"{k.title()}{sep}{v}" for k, v in zip(keys, values))
    i = rng.randrange(len(keys))
    question, answer = ((f"What is the {keys[i]}?", values[i]) if rng.random() < 0.7
                        else (f"Which has {values[i]}?", keys[i].title()))
    return _chat(PROMPT.format(text=text, question=question), answer)


def _repeat_row(rng: random.Random) -> list[dict]:
    s = " ".join(_value(rng) if rng.random() < 0.5 else rng.choice(_WORDS) for _ in range(rng.randint(3, 10)))
    return _chat(s + "\nRepeat the text.", s)


def drill_row(kind: str, rng: random.Random) -> list[dict]:
    """One ``keys`` or ``repeat`` conversation drawn from ``rng``."""
    if kind == "keys":
        return _keys_row(rng)
    if kind == "repeat":
        return _repeat_row(rng)
    raise ValueError(f"drill kind {kind!r}: expected 'keys' or 'repeat' (page rows need a drawn page)")


def lookup_conversations(n: int, seed: int, kinds: tuple[str, ...] = KINDS) -> list[list[dict]]:
    """``n`` drill conversations, the kinds in turn (``page`` rows draw fresh documents and charts
    from their own seed, never a corpus's pages)."""
    from molora.synthetic.charts import draw_chart
    from molora.synthetic.documents import draw_document

    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"look-up drill kinds {sorted(unknown) or kinds!r}: expected a subset of {KINDS}")
    rng = random.Random(f"lookup-drills-{seed}")
    out: list[list[dict]] = []
    pending: list[list[dict]] = []
    while len(out) < n:
        kind = kinds[len(out) % len(kinds)]
        if kind == "page":
            if not pending:
                page = draw_document(rng) if rng.random() < 0.5 else draw_chart(rng)
                text = page_as_text(page)
                pending = [_chat(PROMPT.format(text=text, question=qa.question), qa.answers[0]) for qa in page.qas]
                rng.shuffle(pending)
            out.append(pending.pop())
        else:
            out.append(drill_row(kind, rng))
    return out
