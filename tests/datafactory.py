"""Small training corpora the tests write to disk: manifests of every row kind with media
drawn with Pillow and synthesised as tones (fast, deterministic)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

WORDS = ["red", "green", "blue", "seven", "three", "cat", "dog", "sun"]


def tone(word: str, sr: int = 16000) -> np.ndarray:
    """A word as a sequence of tones (one per letter), so the transcript is learnable from audio."""
    parts = []
    for ch in word:
        f = 200 + 40 * (ord(ch) - 96)
        t = np.arange(int(0.08 * sr)) / sr
        parts.append(0.4 * np.sin(2 * np.pi * f * t))
    return np.concatenate(parts).astype(np.float32)


def picture(word: str, size=(56, 56)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    colour = {"red": "red", "green": "green", "blue": "blue"}.get(word, "black")
    k = WORDS.index(word)
    d.rectangle([4 + 4 * k, 4, 20 + 4 * k, 40], fill=colour)
    return img


def write_media(root: Path, n: int = 8):
    root.mkdir(parents=True, exist_ok=True)
    for w in WORDS[:n]:
        sf.write(root / f"{w}.wav", tone(w), 16000)
        picture(w).save(root / f"{w}.png")


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def corpus(root: Path, kind: str, n: int = 8) -> Path:
    """A manifest of ``kind`` (asr | vqa | chat | joint | mixed | preference) under ``root``."""
    write_media(root, n)
    words = WORDS[:n]
    if kind == "asr":
        rows = [{"audio": f"{w}.wav", "text": w} for w in words]
    elif kind == "vqa":
        rows = [{"image": f"{w}.png", "question": "which word?", "answers": [w]} for w in words]
    elif kind == "joint":
        rows = [{"messages": [{"role": "user", "content": [{"type": "image", "image": f"{w}.png"},
                                                           {"type": "audio", "audio": f"{w}.wav"}]},
                              {"role": "assistant", "content": w}]} for w in words]
    elif kind == "mixed":
        rows = []
        for i, w in enumerate(words):
            content = [[{"type": "text", "text": f"say {w}"}],
                       [{"type": "image", "image": f"{w}.png"}, {"type": "text", "text": "name it"}],
                       [{"type": "audio", "audio": f"{w}.wav"}, {"type": "text", "text": "Transcribe."}],
                       [{"type": "image", "image": f"{w}.png"}, {"type": "audio", "audio": f"{w}.wav"}]][i % 4]
            rows.append({"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": w}]})
    elif kind == "preference":
        rows = []
        for i, w in enumerate(words):
            content = [[{"type": "image", "image": f"{w}.png"}, {"type": "text", "text": "name it"}],
                       [{"type": "audio", "audio": f"{w}.wav"}, {"type": "text", "text": "Transcribe."}],
                       [{"type": "image", "image": f"{w}.png"}, {"type": "audio", "audio": f"{w}.wav"}],
                       [{"type": "text", "text": f"say {w}"}]][i % 4]
            rows.append({"messages": [{"role": "user", "content": content}], "chosen": w,
                         "rejected": words[(i + 3) % n]})
    else:
        raise ValueError(kind)
    return write_manifest(root / f"{kind}.jsonl", rows)
