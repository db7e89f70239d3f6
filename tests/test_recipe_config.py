"""Recipe values are typed before anything loads: `key=value` overrides and YAML files coerced to
each field's type (YAML reads `2e-4` as a string), unknown keys refused with the known ones
listed, out-of-range values and duplicate YAML keys refused with the key (and file:line)."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from datafactory import corpus
from molora.errors import ConfigError, MoLoRAError
from molora.stages.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_readme_override_reaches_the_optimiser_as_a_float(tmp_path):
    """README: `training.lr=2e-4`; YAML 1.1 reads an exponent without a dot as a string."""
    import yaml

    assert yaml.safe_load("2e-4") == "2e-4"  # why coercion is needed
    r = load_recipe("tiny-sft", ["training.lr=2e-4", "max_steps=1e2", "seed=3", "save_every=0",
                                 "training.lr_groups={encoder: 5e-4}", "strict=yes", "data.max_tokens=4096"])
    assert r.training.lr == 2e-4 and type(r.training.lr) is float
    assert r.max_steps == 100 and type(r.max_steps) is int
    assert r.training.lr_groups == {"encoder": 5e-4} and type(r.training.lr_groups["encoder"]) is float
    assert r.strict is True and r.data["max_tokens"] == 4096
    # and the run itself trains with it (a string here once reached torch: TypeError after the model loaded)
    data = corpus(tmp_path / "data", "asr")
    from molora.stages.trainer import train

    rec = load_recipe("tiny-speech", [f"data.train={data}", "max_steps=1", "training.lr=2e-4",
                                      "training.micro_batch_size=2"])
    summary = train(rec, tmp_path / "out", progress=False)
    assert summary["final"]["lr"] == pytest.approx(2e-4)


def test_yaml_file_values_are_coerced_too(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("stage: sft\ntraining:\n  lr: 3e-4\n  warmup_steps: 2.0\nmax_steps: '7'\n")
    r = load_recipe(str(f))
    assert (r.training.lr, r.training.warmup_steps, r.max_steps) == (3e-4, 2, 7)


@pytest.mark.parametrize("override, message", [
    ("training.lr=fast", r"training\.lr: expected a number, got 'fast'"),
    ("max_steps=2.5", r"max_steps: expected an integer, got 2\.5"),
    ("strict=maybe", r"strict: expected true or false, got 'maybe'"),
    ("training.lr=.inf", r"training\.lr: expected a finite number"),
    ("training.lrr=1e-3", r"training\.lrr: unknown key \(did you mean training\.lr\?\); the known keys of training "
                          r"are .*lr_groups"),
    ("data.trian=x.jsonl", r"data\.trian: unknown key \(did you mean data\.train\?\)"),
    ("maxsteps=3", r"maxsteps: unknown key \(did you mean max_steps\?\)"),
    ("training.lr_groups={encodr: 1e-3}", r"training\.lr_groups\.encodr: must be a group among encoder"),
    ("training.schedule=cos", r"training\.schedule: must be one of cosine, linear, constant"),
    ("training.precision=fp8", r"training\.precision: must be one of auto, fp32, bf16, fp16"),
    ("training.lr=-1e-3", r"training\.lr: must be > 0"),
    ("training.micro_batch_size=0", r"training\.micro_batch_size: must be >= 1"),
    ("data.max_tokens=0", r"data\.max_tokens: must be >= 1"),
    ("model.preset=huge", r"model\.preset: must be one of"),
    ("training.spec_augment={freq: 2}", r"training\.spec_augment\.freq: unknown key"),
    ("substeps=[{name: a, train: [vision_lorra]}]", r"substeps\[0\]\.train: must be components among"),
    ("substeps=[{name: a, train: [llm]}]", r"substeps\[0\]\.train: the language model stays frozen"),
    ("training.lr={a: 1", r"training\.lr: invalid YAML"),
    ("training.betas=0.9", r"training\.betas: expected a list of 2 values \(a number, a number\), got 0\.9"),
    ("training.betas=[0.9]", r"training\.betas: expected a list of 2 values"),
    ("training.betas=[0.9, fast]", r"training\.betas\[1\]: expected a number, got 'fast'"),
    ("training.betas=[0.9, 1.0]", r"training\.betas: must be two numbers in \[0, 1\)"),
])
def test_bad_values_name_the_key_and_expected_type(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("tiny-sft", [override])


@pytest.mark.parametrize("override, message", [
    ("dpo.betta=0.2", r"dpo\.betta: unknown key \(did you mean dpo\.beta\?\); the known keys of dpo are beta$"),
    ("dpo.beta=strong", r"dpo\.beta: expected a number, got 'strong'"),
    ("dpo.beta=0", r"dpo\.beta: must be > 0"),
    ("beta=0.2", r"beta: unknown key \(did you mean dpo\.beta\?\)"),
    ("dpo=0.2", r"dpo: expected a mapping"),
])
def test_the_dpo_stage_settings_name_their_section(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("tiny-dpo", [override])


def test_dpo_settings_reach_the_recipe_and_stay_out_of_other_stages():
    from molora.stages.losses import DPOSettings

    assert load_recipe("tiny-dpo", ["dpo.beta=2e-1"]).settings == DPOSettings(beta=0.2)
    assert load_recipe("tiny-dpo", {"dpo": None}).settings == DPOSettings()  # the class's defaults
    assert load_recipe("tiny-dpo").to_dict()["dpo"] == {"beta": 0.1}  # recipe.json keeps the section's name
    sft = load_recipe("tiny-sft")
    assert sft.settings is None and "dpo" not in sft.to_dict()
    with pytest.raises(ConfigError, match=r"^dpo: the settings of stage dpo, but this recipe's stage is 'sft'"):
        load_recipe("tiny-sft", ["dpo.beta=0.2"])


@dataclass(frozen=True)
class ScaledSettings:
    """A test-only stage's settings: its loss is the LM loss times ``scale``."""

    scale: float = 1.0
    tag: str = "plain"

    def out_of_range(self):
        if self.scale < 0:
            yield "scale", ">= 0"


def _scaled_loss(model, batch, ctx):
    from molora.stages.losses import lm_loss_sum

    s = ctx.recipe.settings
    return lm_loss_sum(model, batch) * s.scale, {"scale": s.scale, "tagged": float(s.tag == "seen")}


@pytest.fixture
def scaled_stage(monkeypatch):
    """A stage registered in the table only (stages/recipe.py is not edited for it)."""
    from molora.stages import table

    st = table.Stage("scaled", ("asr",), ({"name": "only", "train": ["speech_projector"], "fraction": 1.0},),
                     _scaled_loss, settings=ScaledSettings)
    monkeypatch.setitem(table.STAGES, "scaled", st)
    return st


def test_a_stage_declares_its_own_settings_and_its_loss_reads_them(scaled_stage, tmp_path):
    from molora.stages.trainer import train

    r = load_recipe("tiny-speech", ["stage=scaled", "scaled.scale=2.5e0", "scaled.tag=seen"])
    assert r.settings == ScaledSettings(scale=2.5, tag="seen") and type(r.settings.scale) is float
    assert load_recipe("tiny-speech", ["stage=scaled"]).settings == ScaledSettings()
    assert r.to_dict()["scaled"] == {"scale": 2.5, "tag": "seen"}
    for override, message in [("scaled.scael=1", r"scaled\.scael: unknown key \(did you mean scaled\.scale\?\); "
                                                 r"the known keys of scaled are scale, tag$"),
                              ("scaled.scale=big", r"scaled\.scale: expected a number, got 'big'"),
                              ("scaled.scale=-1", r"scaled\.scale: must be >= 0, got -1\.0"),
                              ("scale=2", r"scale: unknown key \(did you mean scaled\.scale\?\)")]:
        with pytest.raises(ConfigError, match=message):
            load_recipe("tiny-speech", ["stage=scaled", override])
    with pytest.raises(ConfigError, match=r"^scaled: the settings of stage scaled, but this recipe's stage is "
                                          r"'speech'"):
        load_recipe("tiny-speech", ["scaled.scale=2"])
    data = corpus(tmp_path / "data", "asr")
    r = load_recipe("tiny-speech", ["stage=scaled", "scaled.scale=2.5", "scaled.tag=seen", f"data.train={data}",
                                    "max_steps=1", "training.micro_batch_size=2"])
    train(r, tmp_path / "out", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    step = next(row for row in rows if "loss" in row)
    assert (step["scale"], step["tagged"]) == (2.5, 1.0)  # the loss saw the recipe's section


def test_an_override_given_twice_or_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="seed: given twice"):
        load_recipe("tiny-sft", ["seed=1", "seed=2"])
    with pytest.raises(ConfigError, match="training is 3, not a section"):
        load_recipe("tiny-sft", {"training": 3, "training.lr": 1.0})


def test_duplicate_yaml_keys_are_refused_with_file_and_line(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("stage: sft\nmax_steps: 5\ntraining:\n  lr: 1e-3\n  lr: 2e-3\n")
    with pytest.raises(ConfigError, match=rf"{f}:5: invalid YAML \(duplicate key 'lr' \(first given on line 4\)\)"):
        load_recipe(str(f))


def test_cli_refuses_a_bad_key_before_loading_anything(tmp_path):
    """One line on stderr, exit code 2, no traceback, and nothing written."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "molora.cli", "train", "--recipe", "tiny-sft", "training.lr=fast",
                        "data.train=nowhere.jsonl", "--output-dir", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "molora train: error: training.lr: expected a number, got 'fast' (str)"
    assert not out.exists()


def test_config_errors_are_molora_errors():
    with pytest.raises(MoLoRAError):
        load_recipe("tiny-sft", ["training.grad_accum=x"])


def test_a_run_recorded_before_stages_had_their_own_settings_resumes_without_a_change():
    # runs recorded before stages carried their own settings wrote dpo.beta (at its default) for every stage;
    # resuming such an SFT run is not a change of settings, while another beta still is
    from molora.stages.run_state import describe_changes

    new = {"recipe": {"stage": "sft", "training.lr": 0.01}, "data": "d", "model": "m"}
    old = {"recipe": {"stage": "sft", "training.lr": 0.01, "dpo.beta": 0.1}, "data": "d", "model": "m"}
    assert describe_changes(old, new) == []
    assert describe_changes({**old, "recipe": {**old["recipe"], "dpo.beta": 0.3}}, new) == ["dpo.beta: 0.3 -> '(unset)'"]
    assert describe_changes({**old, "recipe": {**old["recipe"], "other.beta": 0.1}}, new) == ["other.beta: 0.1 -> '(unset)'"]


def test_training_betas_reach_the_optimiser_from_an_override_or_a_yaml_file(tmp_path):
    """training.betas: AdamW's (beta1, beta2), (0.9, 0.95) unless a recipe asks for others (the tiny
    pretraining asks for (0.9, 0.98))."""
    import torch

    from molora.stages.optim import build_optimizer

    assert load_recipe("tiny-sft").training.betas == (0.9, 0.95)
    r = load_recipe("tiny-sft", ["training.betas=[0.9, 0.98]"])
    assert r.training.betas == (0.9, 0.98)
    f = tmp_path / "r.yaml"
    f.write_text("stage: sft\ntraining:\n  betas: [0.8, 0.99]\n")
    assert load_recipe(str(f)).training.betas == (0.8, 0.99)
    head = torch.nn.Linear(2, 2)
    opt = build_optimizer([(f"head.{n}", p) for n, p in head.named_parameters()], r.training)  # (name, param) pairs
    assert [g["betas"] for g in opt.param_groups] == [(0.9, 0.98)]
    assert sum(len(g["params"]) for g in opt.param_groups) == 2


def test_a_run_recorded_before_training_had_betas_resumes_without_a_change():
    """A run recorded before ``training.betas`` existed trained with (0.9, 0.95): resuming it at the
    default is not a change, other betas are."""
    from molora.stages.run_state import describe_changes, run_identity

    new = run_identity(load_recipe("tiny-sft"))
    old = {**new, "recipe": {k: v for k, v in new["recipe"].items() if k != "training.betas"}}
    assert new["recipe"]["training.betas"] == [0.9, 0.95]
    assert describe_changes(old, new) == []
    other = run_identity(load_recipe("tiny-sft", ["training.betas=[0.9, 0.98]"]))
    assert describe_changes(old, other) == ["training.betas: '(unset)' -> [0.9, 0.98]"]
