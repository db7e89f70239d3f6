"""A Pillow canvas that records every string it draws (text, bounding box, role), so a
generator can hand back exactly what is on the page and tests can read fields back."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

__all__ = ["font", "Label", "Canvas", "QA"]


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` px (no font files needed)."""
    return ImageFont.load_default(size=size)


@dataclass
class Label:
    text: str
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the ink
    xy: tuple[int, int]             # where it was drawn (anchor "la")
    size: int
    role: str = ""                  # "title", "field", "value", "category", ...
    key: str | None = None          # field key for fields a question can ask about


@dataclass
class QA:
    question: str
    answers: list[str]              # answers[0] is the training target; all are accepted
    key: str                        # what it asks about ("total", "value:Mar", "max", ...)
    source: str = ""                # charts: "human" | "augmented"


@dataclass
class Canvas:
    width: int
    height: int
    background: str = "white"
    labels: list[Label] = field(default_factory=list)

    def __post_init__(self):
        self.image = Image.new("RGB", (self.width, self.height), self.background)
        self.draw = ImageDraw.Draw(self.image)

    def text_size(self, text: str, size: int) -> tuple[int, int]:
        x0, y0, x1, y1 = self.draw.textbbox((0, 0), text, font=font(size))
        return x1, y1

    def text(self, xy, text: str, size: int, *, role: str = "", key: str | None = None, fill="black",
             align: str = "left") -> Label:
        """Draw ``text`` with its top-left at ``xy`` (``align="right"``: top-right, ``"center"``: top-centre)."""
        w, _ = self.text_size(text, size)
        x, y = int(xy[0]), int(xy[1])
        if align == "right":
            x -= w
        elif align == "center":
            x -= w // 2
        self.draw.text((x, y), text, font=font(size), fill=fill)
        box = tuple(int(v) for v in self.draw.textbbox((x, y), text, font=font(size)))
        label = Label(text, box, (x, y), size, role, key)
        self.labels.append(label)
        return label

    def fields(self) -> dict[str, str]:
        return {lab.key: lab.text for lab in self.labels if lab.key}

    def crop_matches(self, label: Label, fill="black") -> bool:
        """True when the pixels under ``label.box`` are exactly ``label.text`` re-rendered alone
        (on this canvas's background): the field really is on the page, legible and unoccluded."""
        x0, y0, x1, y1 = label.box
        ref = Image.new("RGB", self.image.size, self.background)
        ImageDraw.Draw(ref).text(label.xy, label.text, font=font(label.size), fill=fill)
        return self.image.crop((x0, y0, x1, y1)).tobytes() == ref.crop((x0, y0, x1, y1)).tobytes()
