"""What the evaluation tests share: a saved tiny checkpoint, a processor whose decoded answers are
scripted (scores known by hand), drawn document images, and JSONL reading."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from molora import MoLoRAConfig, MoLoRAModel, MoLoRAProcessor


def save_tiny(directory: Path, seed: int = 0):
    """A random tiny model + processor saved as a molora checkpoint in ``directory``; returns both."""
    torch.manual_seed(seed)
    model = MoLoRAModel(MoLoRAConfig.preset("tiny")).eval()
    processor = MoLoRAProcessor.from_config(model.config)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


class Scripted:
    """The real processor, but ``batch_decode`` returns scripted answers in item order, so the
    scores are known by hand (the tiny model still runs every batch)."""

    def __init__(self, processor, outputs):
        self.processor, self.outputs = processor, iter(outputs)

    def __call__(self, *a, **k):
        return self.processor(*a, **k)

    def batch_decode(self, ids, **k):
        return [next(self.outputs) for _ in range(ids.shape[0])]


def page(i: int, size=(64, 48)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((4, 4), str(7 * i), fill="black")
    return img


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
