"""The README's "Ten lines of Python" run as written (from the shipped tiny model), in a fresh folder
with a chart drawn for it: they answer, and save a checkpoint that loads back."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def _ten_lines() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Ten lines of Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_ten_lines_run_from_the_shipped_model(tmp_path):
    code = _ten_lines()
    assert 'from_pretrained("tiny")' in code and "MoLoRAConfig.preset" not in code  # never a random model
    img = Image.new("RGB", (320, 240), "white")
    d = ImageDraw.Draw(img)
    for i, h in enumerate((60, 150, 90)):
        d.rectangle([40 + 90 * i, 220 - h, 100 + 90 * i, 220], fill=("red", "blue", "green")[i])
    img.save(tmp_path / "chart.png")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "the chat answer is empty"
    from molora import MoLoRAModel

    assert MoLoRAModel.from_pretrained(str(tmp_path / "out")).config.backbone.vocab_size == 1024
