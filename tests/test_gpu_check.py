"""`make gpu-check DEVICE=cpu PRESET=small`: the GPU check script runs end to end on the CPU and
reports every section (the figures themselves are measured on a lent GPU, not asserted)."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path):
    r = subprocess.run(["make", "-s", "gpu-check", "DEVICE=cpu", "PRESET=small"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900, env={**os.environ, "OUT": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (res["device"], res["preset"], res["dtype"]) == ("cpu", "small", "bfloat16")
    step = res["speech_post_training_step"]
    assert step["padding_free"] and step["tokens"] > 0 and step["flops_per_step"] > 0 and step["step_seconds"] > 0
    assert math.isfinite(step["loss"]) and step["trainable_parameters"] > 0 and step["mfu"] is None  # no CPU peak
    asr = res["asr"]
    assert asr["batch"] == 128 and asr["rtfx"] > 0 and asr["new_tokens_per_row"] == 4
    for prompt in ("text", "image", "speech"):
        cmp = res["logits_vs_transformers"][prompt]
        # two bf16 implementations of an 8-layer model: within a few bf16 roundings of the logits' scale
        assert cmp["logit_scale"] > 0 and cmp["relative"] <= 2 ** -4, (prompt, cmp)
        assert isinstance(cmp["same_greedy_tokens"], bool)
