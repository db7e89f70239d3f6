"""Reading rows on fresh pages (documents and charts drawn from pretraining-only seeds, never the
corpora's): whole pages to read, small crops to read, bands of a page around a question's answer."""
from __future__ import annotations

import random

from molora.data.manifest import VQA_SUFFIX
from molora.synthetic.charts import draw_chart
from molora.synthetic.documents import draw_document
from molora.synthetic.lookup import page_as_text, page_text, text_lines

from .rows import image_row

READ_PROMPTS = {"document": "Read the text on the page.", "chart": "Convert the chart to a table.",
                "crop": "Read the text."}


def reading_samples(n: int, seed: int) -> list:
    """``n`` fresh pages (documents and charts drawn from a pretraining-only seed, never the corpora's
    pages), each as a page-reading row (documents: the text in reading order; charts: title, then
    ``category value`` per line, chart-to-table style) and all of its questions as VQA rows.
    More supervision per image than the corpora's two questions per page: the tower learns to read."""
    rng = random.Random(f"pretrain-read-{seed}")
    rows = []
    for i in range(n):
        if i % 2 == 0:
            page = draw_document(rng)
            read, qas = page_text(page.labels), page.qas
            prompt = READ_PROMPTS["document"]
        else:
            page = draw_chart(rng)
            read = page_as_text(page)
            qas, prompt = page.qas, READ_PROMPTS["chart"]
        image = page.image
        rows.append(image_row(image, prompt, [read], f"pretrain-read:{i}"))
        rows += [image_row(image, qa.question + VQA_SUFFIX, qa.answers, f"pretrain-read:{i}:{q}")
                 for q, qa in enumerate(qas)]
    return rows


def reading_crops(n: int, seed: int) -> list:
    """``n`` "read the text" rows on small crops of fresh pages (documents and charts from a
    pretraining-only seed): one drawn string or one text line (``text_lines``), with 2-8 px of
    margin; the answer is the exact string. A crop is a handful of image tokens, so the LM learns
    to read characters out of the tokens before it has to find them on a whole page (curriculum:
    crops, then pages)."""
    rng = random.Random(f"pretrain-crops-{seed}")
    rows = []
    while len(rows) < n:
        page = draw_document(rng) if rng.random() < 0.5 else draw_chart(rng)
        labs = [lab for lab in page.labels if lab.text.strip()]
        units = [[lab] for lab in labs] + [ln for ln in text_lines(labs) if len(ln) > 1]
        w, h = page.image.size
        for u in rng.sample(units, min(len(units), 4)):
            box = (max(0, min(lab.box[0] for lab in u) - rng.randint(2, 8)),
                   max(0, min(lab.box[1] for lab in u) - rng.randint(2, 8)),
                   min(w, max(lab.box[2] for lab in u) + rng.randint(2, 8)),
                   min(h, max(lab.box[3] for lab in u) + rng.randint(2, 8)))
            text = " ".join(lab.text for lab in u)
            rows.append(image_row(page.image.crop(box), READ_PROMPTS["crop"], [text], f"pretrain-crop:{len(rows)}"))
    return rows[:n]


def answer_band(page, qa, rng: random.Random):
    """The crop box of a band of ``page``'s text lines around ``qa``'s answer: its line(s) with 0-2
    lines above and below, a table's header line kept, full width, 2-8 px of margin; ``None`` when
    the answer is not a drawn label."""
    lines = text_lines([lab for lab in page.labels if lab.text.strip()])
    at = [i for i, ln in enumerate(lines) for lab in ln if lab.key == qa.key or lab.text in qa.answers]
    if not at:
        return None
    header = [i for i, ln in enumerate(lines) if any(lab.role == "header" for lab in ln)]
    lo, hi = max(0, min(at) - rng.randint(0, 2)), min(len(lines) - 1, max(at) + rng.randint(0, 2))
    if header:
        lo = min(lo, header[0])
    band = [lab for ln in lines[lo:hi + 1] for lab in ln]
    w, h = page.image.size
    return (0, max(0, min(lab.box[1] for lab in band) - rng.randint(2, 8)),
            w, min(h, max(lab.box[3] for lab in band) + rng.randint(2, 8)))


def region_rows(n: int, seed: int) -> list:
    """``n`` question rows on bands of fresh documents (pretraining-only seed; ``answer_band``), with
    the band's question. Between crops (read one string) and whole pages (find the field among
    ~110 image tokens): the LM learns to find a field among a few lines of image tokens first."""
    rng = random.Random(f"pretrain-regions-{seed}")
    rows = []
    while len(rows) < n:
        page = draw_document(rng)
        for qa in rng.sample(page.qas, min(2, len(page.qas))):
            box = answer_band(page, qa, rng)
            if box is None:
                continue
            rows.append(image_row(page.image.crop(box), qa.question + VQA_SUFFIX, qa.answers,
                                  f"pretrain-region:{len(rows)}"))
    return rows[:n]
