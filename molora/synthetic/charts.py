"""Synthetic ChartQA-style corpus: bar, line and pie charts with labelled values (Pillow).

Every value is printed on the chart (above bars and points; in the pie's legend), so value
questions are answered by reading a label, and comparison questions (highest, lowest,
difference, sum, average, greater-than) are computed from the same numbers. Like ChartQA,
charts come in two sources: ``augmented`` (templated questions) and ``human`` (phrased
questions with the chart's own words: "In which month were sales highest?").

Output: ``images/<split>/<index>.png`` (320x240) and VQA rows ``{"id", "image", "question",
"answers", "chart_type", "key", "source"}`` in ``<split>.jsonl``; the test split is also
written as ``test_human.jsonl`` and ``test_augmented.jsonl``.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from molora.synthetic.common import build_corpus, item_rng, parallel_map, resolve_sizes, write_jsonl, write_png
from molora.synthetic.draw import QA, Canvas, Label

__all__ = ["NAME", "VERSION", "SIZES", "CHART_TYPES", "SOURCES", "Chart", "Theme", "THEMES", "PIE_THEMES",
           "draw_chart", "build"]

NAME = "charts"
VERSION = "v1"
SIZES = {  # charts per split; QUESTIONS_PER_CHART rows each
    "default": {"train": 1500, "dev": 100, "test": 100},
    "tiny": {"train": 8, "dev": 3, "test": 6},
}
QUESTIONS_PER_CHART = 2
CHART_TYPES = ("bar", "line", "pie")
SOURCES = ("augmented", "human")
WIDTH, HEIGHT = 320, 240
PALETTE = ((66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193),
           (255, 112, 67), (121, 85, 72))


@dataclass(frozen=True)
class Theme:
    title: str
    categories: tuple[str, ...]
    entity: str            # "month"
    entities: str          # "months"
    measure: str           # "sales"
    value_q: str           # human value question, {c} = category
    low: int = 10
    high: int = 95


THEMES = (
    Theme("Monthly sales", ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug"), "month", "months",
          "sales", "How many units were sold in {c}?"),
    Theme("Visitors per year", ("2018", "2019", "2020", "2021", "2022", "2023", "2024"), "year", "years",
          "visitors", "How many visitors were there in {c}?"),
    Theme("Fruit harvest (kg)", ("Apples", "Pears", "Plums", "Grapes", "Figs", "Lemons"), "fruit", "fruits",
          "harvest", "How many kilograms of {c} were harvested?"),
    Theme("Points scored", ("Lions", "Tigers", "Bears", "Eagles", "Wolves", "Hawks"), "team", "teams",
          "points", "How many points did the {c} score?"),
    Theme("Rainfall (mm)", ("Oslo", "Rome", "Paris", "Berlin", "Dublin", "Vienna"), "city", "cities",
          "rainfall", "How much rain fell in {c}?"),
)
PIE_THEMES = (
    Theme("Market share", ("Alpha", "Beta", "Gamma", "Delta", "Omega"), "brand", "brands", "share",
          "What share of the market does {c} have?"),
    Theme("Sales by region", ("North", "South", "East", "West", "Centre"), "region", "regions", "share",
          "What percentage of sales came from the {c} region?"),
    Theme("Energy mix", ("Solar", "Wind", "Hydro", "Gas", "Coal"), "source", "sources", "share",
          "What percentage of energy comes from {c}?"),
)


@dataclass
class Chart:
    chart_type: str
    theme: Theme
    data: dict[str, int]   # category -> value (pie: percent, sums to 100), in drawing order
    canvas: Canvas
    qas: list[QA]

    @property
    def image(self):
        return self.canvas.image

    @property
    def labels(self) -> list[Label]:
        return self.canvas.labels

    def value_label(self, category: str) -> Label:
        return next(lab for lab in self.labels if lab.key == f"value:{category}")


def _values(rng: random.Random, n: int, low: int, high: int) -> list[int]:
    return rng.sample(range(low, high + 1), n)  # distinct: highest / lowest are unique


def _percentages(rng: random.Random, n: int) -> list[int]:
    while True:
        cuts = sorted(rng.sample(range(5, 96), n - 1))
        vals = [b - a for a, b in zip([0, *cuts], [*cuts, 100])]
        if min(vals) >= 5 and len(set(vals)) == n:
            return vals


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


# ----------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------
_PLOT = (34, 36, WIDTH - 10, 200)  # x0, top, x1, baseline


def _axes(c: Canvas) -> None:
    x0, top, x1, base = _PLOT
    c.draw.line([(x0, top), (x0, base), (x1, base)], fill="black", width=1)


def _y(v: int, vmax: int) -> int:
    x0, top, x1, base = _PLOT
    return base - round(v / vmax * (base - top - 22))


def _draw_bar(c: Canvas, data: dict[str, int], rng: random.Random) -> None:
    x0, top, x1, base = _PLOT
    _axes(c)
    n, vmax = len(data), max(data.values())
    slot = (x1 - x0) / n
    one_colour = rng.random() < 0.5
    for i, (cat, v) in enumerate(data.items()):
        cx = x0 + slot * (i + 0.5)
        w = slot * 0.55
        colour = PALETTE[0 if one_colour else i % len(PALETTE)]
        y = _y(v, vmax)
        c.draw.rectangle([round(cx - w / 2), y, round(cx + w / 2), base - 1], fill=colour)
        c.text((round(cx), y - 17), str(v), 13, role="value", key=f"value:{cat}", align="center")
        c.text((round(cx), base + 5), cat, 12, role="category", align="center")


def _draw_line(c: Canvas, data: dict[str, int], rng: random.Random) -> None:
    x0, top, x1, base = _PLOT
    _axes(c)
    n, vmax = len(data), max(data.values())
    slot = (x1 - x0) / n
    colour = rng.choice(PALETTE)
    pts = [(round(x0 + slot * (i + 0.5)), _y(v, vmax)) for i, v in enumerate(data.values())]
    c.draw.line(pts, fill=colour, width=2)
    for x, y in pts:
        c.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for (x, y), (cat, v) in zip(pts, data.items()):
        tw, th = c.text_size(str(v), 13)
        # clear a patch under the value so the line never crosses it
        c.draw.rectangle([x - tw // 2 - 2, y - 20, x - tw // 2 + tw + 2, y - 5], fill=c.background)
        c.text((x, y - 19), str(v), 13, role="value", key=f"value:{cat}", align="center")
        c.text((x, base + 5), cat, 12, role="category", align="center")


def _draw_pie(c: Canvas, data: dict[str, int], rng: random.Random) -> None:
    cx, cy, r = 100, 130, 82
    start = -90.0
    colours = rng.sample(PALETTE, len(data))
    for (cat, v), colour in zip(data.items(), colours):
        end = start + 360.0 * v / 100
        c.draw.pieslice([cx - r, cy - r, cx + r, cy + r], start, end, fill=colour, outline="white")
        start = end
    y = 130 - len(data) * 13
    for (cat, v), colour in zip(data.items(), colours):
        c.draw.rectangle([200, y + 3, 211, y + 14], fill=colour)
        c.text((217, y), cat, 13, role="category")
        c.text((WIDTH - 10, y), f"{v}%", 13, role="value", key=f"value:{cat}", align="right")
        y += 26


# ----------------------------------------------------------------------------------------
# questions
# ----------------------------------------------------------------------------------------
def _questions(rng: random.Random, chart_type: str, theme: Theme, data: dict[str, int], source: str) -> list[QA]:
    cats = list(data)
    pie = chart_type == "pie"
    human = source == "human"
    out: list[QA] = []

    def value_answers(v: int) -> list[str]:
        return [str(v), f"{v}%"] if pie else [str(v)]

    for c in rng.sample(cats, min(2, len(cats))):
        q = theme.value_q.format(c=c) if human else (
            f"What percentage does {c} account for?" if pie else f"What is the value of {c}?")
        out.append(QA(q, value_answers(data[c]), f"value:{c}", source))
    hi = max(cats, key=data.get)
    lo = min(cats, key=data.get)
    if human:
        m, e = theme.measure, theme.entity
        out.append(QA(rng.choice((f"Which {e} has the highest {m}?", f"Which {e} has the most {m}?")), [hi], "max",
                      source))
        out.append(QA(rng.choice((f"Which {e} has the lowest {m}?", f"Which {e} has the least {m}?")), [lo], "min",
                      source))
    else:
        noun = "share" if pie else "value"
        out.append(QA(f"Which category has the highest {noun}?", [hi], "max", source))
        out.append(QA(f"Which category has the lowest {noun}?", [lo], "min", source))
    a, b = rng.sample(cats, 2)
    if data[a] < data[b]:
        a, b = b, a
    diff, total = data[a] - data[b], data[a] + data[b]
    if human:
        out.append(QA(rng.choice((f"What is the difference in {theme.measure} between {a} and {b}?",
                                  f"By how much does {a} exceed {b} in {theme.measure}?")), [str(diff)],
                      f"diff:{a}:{b}", source))
        out.append(QA(rng.choice((f"What is the total {theme.measure} of {a} and {b} combined?",
                                  f"If you add {a} and {b}, how much {theme.measure} is that?")), [str(total)],
                      f"sum:{a}:{b}", source))
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        out.append(QA(f"Does {first} have more {theme.measure} than {second}?",
                      ["Yes" if data[first] > data[second] else "No"], f"gt:{first}:{second}", source))
        if not pie:
            mean = sum(data.values()) / len(data)
            out.append(QA(f"What is the average {theme.measure} across the {theme.entities} shown?",
                          [_fmt(round(mean, 1))], "mean", source))
    else:
        out.append(QA(f"What is the difference between {a} and {b}?", [str(diff)], f"diff:{a}:{b}", source))
        out.append(QA(f"What is the sum of {a} and {b}?", [str(total)], f"sum:{a}:{b}", source))
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        out.append(QA(f"Is the value of {first} greater than that of {second}?",
                      ["Yes" if data[first] > data[second] else "No"], f"gt:{first}:{second}", source))
    return out


def draw_chart(rng: random.Random, chart_type: str | None = None, source: str | None = None) -> Chart:
    """One chart (type and question source drawn from ``rng`` when None) with all its questions."""
    chart_type = chart_type or rng.choice(CHART_TYPES)
    source = source or rng.choice(SOURCES)
    if chart_type == "pie":
        theme = rng.choice(PIE_THEMES)
        n = rng.randint(3, 5)
        cats = rng.sample(theme.categories, n)
        values = _percentages(rng, n)
    else:
        theme = rng.choice(THEMES)
        n = rng.randint(3, 5)
        start = rng.randint(0, len(theme.categories) - n)
        ordered = theme.entity in ("month", "year")  # consecutive, in order
        cats = list(theme.categories[start:start + n]) if ordered else rng.sample(theme.categories, n)
        values = _values(rng, n, theme.low, theme.high)
    data = dict(zip(cats, values))
    c = Canvas(WIDTH, HEIGHT)
    c.text((WIDTH // 2, 8), theme.title, 15, role="title", align="center")
    {"bar": _draw_bar, "line": _draw_line, "pie": _draw_pie}[chart_type](c, data, rng)
    return Chart(chart_type, theme, data, c, _questions(rng, chart_type, theme, data, source))


def _pick(rng: random.Random, qas: list[QA], k: int) -> list[QA]:
    """``k`` questions, at most one value question (comparisons get their share)."""
    values = [q for q in qas if q.key.startswith("value:")]
    others = [q for q in qas if not q.key.startswith("value:")]
    first = rng.choice(values)
    return [first, *rng.sample(others, min(k - 1, len(others)))]


def _chart(out_dir: str, seed: int, split: str, index: int) -> list[dict]:
    rng = item_rng(NAME, seed, split, index)
    chart = draw_chart(rng, CHART_TYPES[index % 3], SOURCES[(index // 3) % 2])
    rel = f"images/{split}/{index:05d}.png"
    write_png(Path(out_dir) / rel, chart.image)
    return [{"id": f"{NAME}-{split}-{index:05d}-{q}", "image": rel, "question": qa.question, "answers": qa.answers,
             "chart_type": chart.chart_type, "key": qa.key, "source": qa.source}
            for q, qa in enumerate(_pick(rng, chart.qas, QUESTIONS_PER_CHART))]


def build(root=None, seed: int = 0, sizes: dict[str, int] | str = "default", *, workers: int | None = None,
          force: bool = False, log=None) -> dict[str, Path]:
    """Build (or reuse) the chart corpus (sizes in charts); returns ``{split: manifest path}``
    including ``test_human`` and ``test_augmented``."""
    tag, sizes = resolve_sizes(sizes, SIZES)

    def builder(out: Path) -> dict:
        manifests, counts, charts, t0 = {}, {}, 0, time.perf_counter()
        for split, n in sizes.items():
            rows = [r for rs in parallel_map(_chart, [(str(out), seed, split, i) for i in range(n)], workers)
                    for r in rs]
            counts[split] = write_jsonl(out / f"{split}.jsonl", rows)
            manifests[split] = f"{split}.jsonl"
            charts += n
            if split == "test":
                for source in SOURCES:
                    name = f"test_{source}"
                    counts[name] = write_jsonl(out / f"{name}.jsonl", [r for r in rows if r["source"] == source])
                    manifests[name] = f"{name}.jsonl"
        return {"manifests": manifests, "counts": counts, "charts": dict(sizes),
                "seconds_per_image": round((time.perf_counter() - t0) / max(charts, 1), 4)}

    return build_corpus(NAME, seed, VERSION, tag, root, sizes, builder, force=force, log=log)

