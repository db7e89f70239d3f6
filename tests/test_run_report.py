"""What a training run tells its user: data.eval evaluated (at least at the end) and reported in
summary.json and the end-of-run lines, loss compared over windows, loss.png, each group's learning
rate in the banner, sub-steps left without a step, and one-line errors for bad keys and bad JSON."""
from __future__ import annotations

import json

import pytest

from datafactory import corpus
from molora.errors import ConfigError, MoLoRAError
from molora.stages.recipe import load_recipe
from molora.stages.trainer import train


def test_eval_data_alone_is_evaluated_at_the_end_and_reported(tmp_path, capsys):
    data = corpus(tmp_path / "data", "mixed", n=4)
    r = load_recipe("tiny-sft", {"data.train": str(data), "data.eval": str(data), "max_steps": 20,
                                 "training.micro_batch_size": 2, "training.lr_groups": {"lora": 5e-3}})
    summary = train(r, tmp_path / "out", progress=False)
    printed = capsys.readouterr().out
    assert "[molora] data.eval is evaluated at the end of the run (training.eval_every=N" in printed
    rows = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in rows if "eval_loss" in x]
    assert [x["step"] for x in evals] == [20] and evals[0]["eval_loss"] > 0
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["eval"] == evals[0] == summary["eval"]
    assert f"  eval (step 20): eval_loss {evals[0]['eval_loss']:.4f}" in printed
    # loss: means over the first and last tenth (2 of 20 steps), not two single steps
    losses = [x["loss"] for x in rows if "loss" in x]
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert saved["windows"]["loss"] == {"first": pytest.approx(first, rel=1e-12), "last": pytest.approx(last, rel=1e-12),
                                        "first_steps": [1, 2], "last_steps": [19, 20]}
    assert f"  loss {first:.4f} (steps 1-2) -> {last:.4f} (steps 19-20)   (means over the first and the last tenth" \
        in printed
    # the loss plot, a real PNG
    from PIL import Image

    with Image.open(tmp_path / "out" / "loss.png") as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert f"plot: {tmp_path / 'out' / 'loss.png'}" in printed
    # the banner shows each parameter group's rate
    assert "(cosine lr lora 0.005, projector 0.01, warmup" in printed


def test_max_steps_below_the_sub_steps_is_said(tmp_path, capsys):
    data = corpus(tmp_path / "data", "vqa", n=4)
    r = load_recipe("tiny-vision", {"data.train": str(data), "max_steps": 2, "training.micro_batch_size": 2})
    train(r, tmp_path / "out", progress=False)
    line = next(l for l in capsys.readouterr().out.splitlines() if "warning" in l)
    assert line == ("[molora] warning: max_steps=2 gives sub-step(s) projector_alignment no step (steps per "
                    "sub-step: projector_alignment 0, encoder_projector 1, vision_lora 1); raise max_steps to train "
                    "every sub-step")


@pytest.mark.parametrize("override, message", [
    ("lr=1e-3", r"^lr: unknown key \(did you mean training\.lr\?\)"),
    ("eval_every=5", r"^eval_every: unknown key \(did you mean training\.eval_every\?\)"),
    ("training.learning_rate=1e-3", r"^training\.learning_rate: unknown key \(did you mean training\.lr\?\)"),
    ("batch_size=4", r"^batch_size: unknown key \(did you mean training\.micro_batch_size\?\)"),
    ("training.spec_augment={freq: 2}", r"^training\.spec_augment\.freq: unknown key \(did you mean "
                                        r"training\.spec_augment\.freq_mask_param\?\)"),
    ("data.train={path: somewhere, splt: test}", r"^data\.train\.splt: unknown key \(did you mean data\.train\.split\?\)"),
])
def test_an_unknown_key_suggests_the_closest(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_recipe("tiny-sft", [override])
    assert "\n" not in str(e.value)


def test_invalid_json_in_the_training_data_is_one_clear_line(tmp_path):
    data = corpus(tmp_path / "data", "asr", n=2)
    bad = tmp_path / "data" / "bad.jsonl"
    bad.write_text(data.read_text() + '{"audio": "red.wav", "text": "unfinished')  # cut short
    with pytest.raises(MoLoRAError) as e:
        train(load_recipe("tiny-speech", {"data.train": str(bad), "max_steps": 1}), tmp_path / "out", progress=False)
    assert str(e.value) == f"{bad}:3: invalid JSON (Unterminated string starting at column 30)"


def test_an_unknown_datasets_option_is_refused_before_anything_loads(tmp_path):
    from molora.cli import main

    out = tmp_path / "out"
    spec = "data.train={path: " + str(tmp_path) + ", splt: test}"
    assert main(["train", "--stage", "sft", spec, "--output-dir", str(out)]) == 2  # before: TypeError traceback
    assert not out.exists()


