"""Deterministic stand-in media for tests and benchmarks: a drawn image and a synthetic chirp.

Both are pure functions of their arguments (numpy's seeded generator), so the test suite and
``benchmarks/`` feed the same pixels and samples to molora and to the reference on every machine.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["drawn_image", "synth_audio"]


def drawn_image(w: int, h: int, seed: int = 0) -> Image.Image:
    """A ``w`` x ``h`` RGB image: a random background, six random rectangles and the text "42"."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(1, max(2, w))), y0 + int(rng.integers(1, max(2, h)))
        d.rectangle([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    d.text((1, 1), "42", fill=(0, 0, 0))
    return img


def synth_audio(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A float32 mono chirp (start frequency set by ``seed``) plus a little white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 200 + 100 * seed
    x = 0.3 * np.sin(2 * np.pi * (f0 + 300 * t) * t) + 0.05 * rng.standard_normal(t.shape)
    return x.astype(np.float32)
