"""Where every character of a drawn page lands in the vision tower's pooled token grid.

The tiny vision tower is pretrained to read with a dense auxiliary objective: each pooled
2x2-patch cell of the HD crop grid (one image token) predicts, in reading order, the characters
whose centres fall inside it. The generators record every string they draw (``Canvas.labels``:
text, font size, anchor), so character positions are exact: x from the font's advance widths,
y from the label's ink box. ``cell_targets`` maps them through the same crop plan / resize the
image transform applies and returns class ids ``[rows*g, cols*g, slots]`` laid out like the
sub-crop grid ``ImageEmbedder`` builds (``g`` pooled cells per crop side); 0 = no character.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from molora.encoders.image_transform import plan_crops
from molora.synthetic.draw import Label, font

__all__ = ["CHARSET", "NUM_CLASSES", "char_class", "CharBox", "char_boxes", "cell_targets", "cell_text"]

CHARSET = "".join(chr(c) for c in range(33, 127))  # printable ASCII without the space
NUM_CLASSES = len(CHARSET) + 2  # 0 = empty slot, 1.. = CHARSET, last = any other character
_INDEX = {ch: i + 1 for i, ch in enumerate(CHARSET)}


def char_class(ch: str) -> int:
    return _INDEX.get(ch, NUM_CLASSES - 1)


@dataclass(frozen=True)
class CharBox:
    char: str
    cx: float  # centre, page pixels
    cy: float


def char_boxes(label: Label) -> list[CharBox]:
    """Every non-space character of ``label`` with its centre on the page."""
    f = font(label.size)
    cy = (label.box[1] + label.box[3]) / 2
    out, left = [], 0.0
    for i, ch in enumerate(label.text):
        right = f.getlength(label.text[: i + 1])
        if not ch.isspace():
            out.append(CharBox(ch, label.xy[0] + (left + right) / 2, cy))
        left = right
    return out


def _cells(labels: list[Label], width: int, height: int, crop: int, patch: int, max_crops: int):
    p = plan_crops(width, height, crop, patch, max_crops)
    g, cell = p.pooled_per_side, 2 * patch
    sx, sy = p.new_width / width, p.new_height / height
    cells: dict[tuple[int, int], list[tuple[float, float, str]]] = {}
    for lab in labels:
        for b in char_boxes(lab):
            r, c = int(b.cy * sy // cell), int(b.cx * sx // cell)
            if 0 <= r < p.rows * g and 0 <= c < p.cols * g:
                cells.setdefault((r, c), []).append((round(b.cy * sy / 4), b.cx * sx, b.char))
    for chars in cells.values():
        chars.sort()  # reading order: line (y in 4-px steps), then x
    return p, g, cells


def cell_targets(labels: list[Label], width: int, height: int, crop: int, patch: int, max_crops: int,
                 slots: int = 6) -> torch.Tensor:
    """Class ids ``[rows*g, cols*g, slots]`` (int64): the characters of each pooled cell in reading
    order, 0-padded; a cell with more than ``slots`` characters keeps the first ``slots``."""
    p, g, cells = _cells(labels, width, height, crop, patch, max_crops)
    out = torch.zeros(p.rows * g, p.cols * g, slots, dtype=torch.long)
    for (r, c), chars in cells.items():
        ids = [char_class(ch) for _, _, ch in chars[:slots]]
        out[r, c, : len(ids)] = torch.tensor(ids)
    return out


def cell_text(labels: list[Label], width: int, height: int, crop: int, patch: int, max_crops: int) -> dict:
    """``{(row, col): "chars"}`` for the cells that hold characters (the untruncated targets)."""
    _, _, cells = _cells(labels, width, height, crop, patch, max_crops)
    return {rc: "".join(ch for _, _, ch in chars) for rc, chars in cells.items()}
