"""Synthetic DocVQA-style corpus: forms, receipts and tables drawn with Pillow.

Every question asks for a field that the generator drew, so answers are right by
construction; ``draw_document`` returns the page with the exact strings and boxes it drew
(``Page.fields``, ``Page.labels``). Money is drawn as ``$12.50`` and accepted as ``12.50`` too;
phone numbers are accepted with or without the dash.

Output: ``images/<split>/<index>.png`` (256-320 px wide) and ``<split>.jsonl`` VQA rows
``{"id", "image", "question", "answers", "doc_type", "key"}``, a few questions per page.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from molora.synthetic.common import build_corpus, item_rng, parallel_map, resolve_sizes, write_jsonl, write_png
from molora.synthetic.draw import QA, Canvas, Label

__all__ = ["NAME", "VERSION", "SIZES", "KINDS", "Page", "draw_document", "draw_form", "draw_receipt",
           "draw_table", "build"]

NAME = "documents"
VERSION = "v1"
SIZES = {  # pages per split; QUESTIONS_PER_PAGE rows each
    "default": {"train": 1500, "dev": 100, "test": 100},
    "tiny": {"train": 8, "dev": 3, "test": 3},
}
QUESTIONS_PER_PAGE = 2
KINDS = ("form", "receipt", "table")

FIRST = ("Anna", "Ben", "Carla", "David", "Emma", "Frank", "Grace", "Hugo", "Ines", "Jack", "Kate", "Liam",
         "Mia", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor")
LAST = ("Smith", "Brown", "Lee", "Garcia", "Miller", "Davis", "Wilson", "Moore", "Taylor", "Clark", "Lewis",
        "Young", "King", "Wright", "Hill", "Green")
CITIES = ("Paris", "Berlin", "Madrid", "Rome", "London", "Oslo", "Vienna", "Dublin", "Lisbon", "Prague",
          "Boston", "Denver", "Austin", "Toronto")
SHOPS = ("Corner Cafe", "Green Market", "City Books", "Blue Bakery", "Fresh Foods", "Sun Pharmacy",
         "Tech Store", "Pet World", "Daily Deli", "Fruit Stand")
ITEMS = ("Coffee", "Tea", "Bread", "Milk", "Apples", "Cheese", "Eggs", "Juice", "Pasta", "Rice", "Soap",
         "Pens", "Notebook", "Cake", "Water", "Salad", "Soup", "Butter")
TEAMS = ("Lions", "Tigers", "Bears", "Eagles", "Wolves", "Sharks", "Hawks", "Foxes")
FORM_TITLES = ("REGISTRATION FORM", "ORDER FORM", "APPLICATION", "MEMBER CARD", "VISITOR PASS")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass
class Page:
    kind: str
    canvas: Canvas
    qas: list[QA]

    @property
    def image(self):
        return self.canvas.image

    @property
    def fields(self) -> dict[str, str]:
        """field key -> the exact string drawn for it."""
        return self.canvas.fields()

    @property
    def labels(self) -> list[Label]:
        return self.canvas.labels


def _money(cents: int) -> list[str]:
    s = f"{cents // 100}.{cents % 100:02d}"
    return [f"${s}", s]


def _date(rng: random.Random) -> str:
    d, m, y = rng.randint(1, 28), rng.randint(1, 12), rng.randint(2015, 2025)
    return f"{d:02d}/{m:02d}/{y}" if rng.random() < 0.5 else f"{d} {MONTHS[m - 1]} {y}"


# ----------------------------------------------------------------------------------------
# forms
# ----------------------------------------------------------------------------------------
_FORM_FIELDS = {  # key: (label, questions)
    "name": ("Name:", ("What is the name on the form?", "Whose form is this?", "What name is written on the form?")),
    "date": ("Date:", ("What is the date on the form?", "When was the form filled in?")),
    "id": ("ID:", ("What is the ID number?", "What is the ID on the form?")),
    "city": ("City:", ("Which city is written on the form?", "What city is given on the form?")),
    "phone": ("Phone:", ("What is the phone number?", "Which phone number is on the form?")),
    "age": ("Age:", ("What is the age on the form?", "How old is the person on the form?")),
}


def draw_form(rng: random.Random) -> Page:
    keys = rng.sample(sorted(_FORM_FIELDS), 4)
    values = {"name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "date": _date(rng),
              "id": str(rng.randint(10000, 99999)), "city": rng.choice(CITIES),
              "phone": f"{rng.randint(200, 999)}-{rng.randint(1000, 9999)}", "age": str(rng.randint(18, 80))}
    width, row = 320, 34
    c = Canvas(width, 52 + len(keys) * row + 10)
    c.text((width // 2, 10), rng.choice(FORM_TITLES), 18, role="title", align="center")
    c.draw.line([(10, 38), (width - 10, 38)], fill="black", width=2)
    qas = []
    for i, key in enumerate(keys):
        y = 50 + i * row
        label, questions = _FORM_FIELDS[key]
        c.text((12, y), label, 15, role="label")
        c.text((92, y), values[key], 16, role="field", key=key)
        c.draw.line([(88, y + 23), (width - 12, y + 23)], fill=(150, 150, 150), width=1)
        answers = [values[key]]
        if key == "phone":
            answers.append(values[key].replace("-", ""))
        qas.append(QA(rng.choice(questions), answers, key))
    return Page("form", c, qas)


# ----------------------------------------------------------------------------------------
# receipts
# ----------------------------------------------------------------------------------------
def draw_receipt(rng: random.Random) -> Page:
    items = rng.sample(ITEMS, rng.randint(2, 4))
    prices = [rng.randint(10, 399) * 5 for _ in items]  # cents, multiples of 5: 0.50 .. 19.95
    total = sum(prices)
    shop, date = rng.choice(SHOPS), _date(rng)
    width, row = 256, 24
    height = 72 + len(items) * row + 52
    c = Canvas(width, height, background=(255, 253, 240))
    c.text((width // 2, 8), shop, 17, role="title", key="shop", align="center")
    c.text((12, 32), "Date:", 13, role="label")
    c.text((56, 32), date, 13, role="field", key="date")
    y = 56
    c.draw.line([(8, y), (width - 8, y)], fill="black", width=1)
    qas = [QA(rng.choice(("What is the name of the store?", "Which shop is this receipt from?")), [shop], "shop"),
           QA("What is the date on the receipt?", [date], "date")]
    for item, cents in zip(items, prices):
        y += 8
        c.text((12, y), item, 15, role="item")
        c.text((width - 12, y), _money(cents)[0], 15, role="field", key=f"price:{item}", align="right")
        does = "do" if item.endswith("s") else "does"
        q = rng.choice((f"How much {does} the {item.lower()} cost?", f"What is the price of the {item.lower()}?"))
        qas.append(QA(q, _money(cents), f"price:{item}"))
        y += row - 8
    y += 8
    c.draw.line([(8, y), (width - 8, y)], fill="black", width=1)
    y += 8
    c.text((12, y), "TOTAL", 16, role="label")
    c.text((width - 12, y), _money(total)[0], 16, role="field", key="total", align="right")
    qas.append(QA(rng.choice(("What is the total?", "What is the total amount?", "How much is the total?")),
                  _money(total), "total"))
    return Page("receipt", c, qas)


# ----------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------
_TABLES = (  # title, header, row labels, value maker
    ("Stock", ("Item", "Qty", "Price"), ITEMS),
    ("Scores", ("Team", "Won", "Lost"), TEAMS),
    ("Rainfall (mm)", ("City", "Jan", "Feb"), CITIES),
)


def draw_table(rng: random.Random) -> Page:
    title, header, pool = rng.choice(_TABLES)
    names = rng.sample(pool, rng.randint(3, 4))
    rows = []
    for name in names:
        if title == "Stock":
            cells = [str(rng.randint(1, 60)), _money(rng.randint(10, 199) * 5)[1]]
        elif title == "Scores":
            cells = [str(rng.randint(0, 20)), str(rng.randint(0, 20))]
        else:
            cells = [str(rng.randint(10, 99)), str(rng.randint(10, 99))]
        rows.append((name, cells))
    width, row_h, top = 320, 26, 34
    height = top + (len(rows) + 1) * row_h + 10
    c = Canvas(width, height)
    c.text((width // 2, 8), title, 16, role="title", align="center")
    xs = (10, 130, 225, width - 10)  # column edges
    for r in range(len(rows) + 2):
        c.draw.line([(xs[0], top + r * row_h), (xs[-1], top + r * row_h)], fill="black", width=1)
    for x in xs:
        c.draw.line([(x, top), (x, top + (len(rows) + 1) * row_h)], fill="black", width=1)
    for j, h in enumerate(header):
        c.text((xs[j] + 6, top + 5), h, 14, role="header")
    qas = []
    for i, (name, cells) in enumerate(rows):
        y = top + (i + 1) * row_h + 5
        c.text((xs[0] + 6, y), name, 14, role="row")
        for j, v in enumerate(cells):
            col = header[j + 1]
            key = f"cell:{name}:{col}"
            c.text((xs[j + 1] + 6, y), v, 14, role="field", key=key)
            answers = [v, f"${v}"] if col == "Price" else [v]
            q = rng.choice((f"What is the {col.lower()} for {name}?", f"In the table, what is the {col} of {name}?"))
            qas.append(QA(q, answers, key))
            column = [cs[j] for _, cs in rows]
            if column.count(v) == 1 and col != "Price":
                qas.append(QA(f"Which {header[0].lower()} has {v} in the {col} column?", [name], f"row:{col}:{v}"))
    return Page("table", c, qas)


_DRAWERS = {"form": draw_form, "receipt": draw_receipt, "table": draw_table}


def draw_document(rng: random.Random, kind: str | None = None) -> Page:
    """One page of ``kind`` (form / receipt / table; drawn from ``rng`` when None)."""
    kind = kind or rng.choice(KINDS)
    return _DRAWERS[kind](rng)


def _page(out_dir: str, seed: int, split: str, index: int) -> list[dict]:
    rng = item_rng(NAME, seed, split, index)
    page = draw_document(rng, KINDS[index % len(KINDS)])
    rel = f"images/{split}/{index:05d}.png"
    write_png(Path(out_dir) / rel, page.image)
    chosen = rng.sample(page.qas, min(QUESTIONS_PER_PAGE, len(page.qas)))
    return [{"id": f"{NAME}-{split}-{index:05d}-{q}", "image": rel, "question": qa.question,
             "answers": qa.answers, "doc_type": page.kind, "key": qa.key} for q, qa in enumerate(chosen)]


def build(root=None, seed: int = 0, sizes: dict[str, int] | str = "default", *, workers: int | None = None,
          force: bool = False, log=None) -> dict[str, Path]:
    """Build (or reuse) the document corpus (sizes in pages); returns ``{split: manifest path}``."""
    tag, sizes = resolve_sizes(sizes, SIZES)

    def builder(out: Path) -> dict:
        manifests, counts, pages, t0 = {}, {}, 0, time.perf_counter()
        for split, n in sizes.items():
            rows = [r for rs in parallel_map(_page, [(str(out), seed, split, i) for i in range(n)], workers)
                    for r in rs]
            counts[split] = write_jsonl(out / f"{split}.jsonl", rows)
            manifests[split] = f"{split}.jsonl"
            pages += n
        return {"manifests": manifests, "counts": counts, "pages": dict(sizes),
                "seconds_per_image": round((time.perf_counter() - t0) / max(pages, 1), 4)}

    return build_corpus(NAME, seed, VERSION, tag, root, sizes, builder, force=force, log=log)
