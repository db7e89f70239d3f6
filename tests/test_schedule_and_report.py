"""What a run tells its user: the learning rate each step really used (per sub-step schedules, under
gradient accumulation), banners counting steps from 1 like bars and metrics, the end-of-run
summary, and the quickstart's metrics plot colouring each bar by whether the metric improved."""
from __future__ import annotations

import json
import math

import pytest

from datafactory import corpus
from molora.stages.recipe import load_recipe
from molora.stages.trainer import train


def cosine(step: int, n: int, warm: int) -> float:
    """The documented schedule, written out: linear warmup reaching 1 on its last step, then cosine."""
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / (n - warm)))


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_logged_lr_is_the_lr_each_step_used(tmp_path, grad_accum, capsys):
    """6 steps, two sub-steps of 3, warmup_steps=3: each sub-step decays from 1e-2 (its warmup capped to 0).
    A regression this catches logged 6.7e-3, 1e-2, 1e-2, 6.7e-3, 1e-2, 1e-2 (the next step's rate, and a
    warmup as long as the sub-step: no decay at all)."""
    data = corpus(tmp_path / "data", "mixed", n=4)
    subs = "[{name: first, train: [vision_lora], fraction: 1}, {name: second, train: [speech_lora], fraction: 1}]"
    r = load_recipe("tiny-sft", [f"data.train={data}", "max_steps=6", "training.lr=1e-2", "training.warmup_steps=3",
                                 f"training.grad_accum={grad_accum}", "training.micro_batch_size=2",
                                 f"substeps={subs}"])
    train(r, tmp_path / "out", progress=False)
    rows = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    warm = 0  # warmup 3 is capped at a quarter of a 3-step sub-step
    expected = [1e-2 * cosine(s, 3, warm) for s in range(3)] * 2
    assert [x["lr"] for x in rows] == pytest.approx(expected, rel=1e-12)
    assert expected[:3] == pytest.approx([1e-2, 7.5e-3, 2.5e-3])
    out = capsys.readouterr().out
    assert "[molora] sft / first: steps 1-3 of 6" in out and "[molora] sft / second: steps 4-6 of 6" in out
    assert "warmup 0 (training.warmup_steps=3 capped at a quarter of the sub-step)" in out
    assert [x["step"] for x in rows] == [1, 2, 3, 4, 5, 6]


def test_long_sub_steps_keep_the_full_warmup(tmp_path):
    data = corpus(tmp_path / "data", "asr", n=4)
    r = load_recipe("tiny-speech", [f"data.train={data}", "max_steps=12", "training.warmup_steps=3",
                                    "training.micro_batch_size=2", "training.min_lr_ratio=0.1",
                                    "substeps=[{name: only, train: [speech_projector]}]"])
    train(r, tmp_path / "out", progress=False)
    lrs = [json.loads(l)["lr"] for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    floor = 0.1
    assert lrs == pytest.approx([1e-2 * (floor + (1 - floor) * cosine(s, 12, 3)) if s >= 3 else 1e-2 * (s + 1) / 3
                                 for s in range(12)], rel=1e-12)


def test_end_of_run_summary(tmp_path, capsys):
    data = corpus(tmp_path / "data", "preference", n=4)
    r = load_recipe("tiny-dpo", [f"data.train={data}", "max_steps=2", "training.micro_batch_size=2"])
    summary = train(r, tmp_path / "out", progress=False)
    out = capsys.readouterr().out
    assert "[molora] done: 2 step(s) in" in out
    assert f"  loss {summary['final']['loss']:.4f} (step 2)" not in out  # the first step is named, then the last
    assert "(step 1) -> " in out and f"-> {summary['final']['loss']:.4f} (step 2)" in out
    assert "reward_margin 0.0000 (step 1) -> " in out and "reward_accuracy 0.0000 (step 1) -> " in out
    assert f"model: {tmp_path / 'out' / 'final'}" in out


def test_bar_colours_follow_whether_the_metric_improved():
    from molora.quickstart import bar_changes

    assert bar_changes("wer", [88.9, 3.1, 5.0, 5.0]) == ["start", "improved", "worse", "unchanged"]
    assert bar_changes("anls", [0.1, 0.3, 0.2]) == ["start", "improved", "worse"]
    assert bar_changes("relaxed_accuracy", [0.1, float("nan")]) == ["start", "unchanged"]


def test_metrics_png_paints_a_worse_wer_red(tmp_path):
    """A worse WER is painted red (a regression this catches painted every trained bar green)."""
    import numpy as np
    from PIL import Image

    from molora.quickstart import COLOURS, write_plots

    stage = {"losses": [1.0, 0.5], "metrics": {}}
    results = {"before": {"wer": 50.0, "anls": 0.1, "relaxed_accuracy": 0.1},
               "stages": {"speech": {**stage, "metrics": {"wer": 10.0, "anls": 0.1, "relaxed_accuracy": 0.1}},
                          "sft": {**stage, "metrics": {"wer": 30.0, "anls": 0.1, "relaxed_accuracy": 0.1}}}}
    write_plots(tmp_path, results)
    img = np.asarray(Image.open(tmp_path / "metrics.png").convert("RGB")).astype(int)
    wer_panel = img[:, : img.shape[1] // 3]
    from matplotlib.colors import to_rgb

    def count(colour):
        rgb = np.array([round(255 * c) for c in to_rgb(colour)])
        return int((np.abs(wer_panel - rgb).sum(-1) < 6).sum())

    assert count(COLOURS["worse"]) > 100 and count(COLOURS["improved"]) > 100  # sft worse, speech better
