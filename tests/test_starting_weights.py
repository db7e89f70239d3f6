"""Every documented training command starts from the shipped pretrained tiny model (issue 24): the
recipes' `model: {preset: tiny}`, `--stage`, and the quickstart's printed commands; a random start
only with `model.init=random`. The banner and run.json say what the run started from."""
from __future__ import annotations

import json
import math

import pytest
import torch

from datafactory import corpus
from molora import MoLoRAModel
from molora.checkpoint import preset_weights
from molora.errors import ConfigError
from molora.stages.recipe import load_recipe, stage_recipe
from molora.stages.trainer import build_model, train


def _same_tensors(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_preset_recipe_starts_from_the_shipped_weights():
    r = load_recipe("tiny-speech", {"data.train": "x.jsonl"})
    model, _ = build_model(r.model, seed=0)
    assert _same_tensors(model, MoLoRAModel.from_pretrained("tiny"))  # seed 0: the same model
    # another seed: the same pretrained parts, other fresh projectors / LoRAs
    other, _ = build_model(r.model, seed=1)
    shipped = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(str(preset_weights("tiny"))))
    sd, so = model.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], so[k]) for k in shipped)
    assert any(not torch.equal(sd[k], so[k]) for k in sd if k not in shipped)


def test_random_only_when_asked():
    r = stage_recipe("speech", ["data.train=x.jsonl", "model.init=random"])
    model, _ = build_model(r.model, seed=0)
    torch.manual_seed(0)
    from molora import MoLoRAConfig

    assert _same_tensors(model, MoLoRAModel(MoLoRAConfig.preset("tiny")))
    with pytest.raises(ConfigError, match=r"^model\.init: must be one of pretrained, random, got 'fresh'"):
        stage_recipe("speech", ["data.train=x.jsonl", "model.init=fresh"])


def test_a_config_override_that_changes_a_pretrained_part_is_named():
    r = load_recipe("tiny-speech", {"data.train": "x.jsonl", "model.config": {"backbone": {"intermediate_size": 96}}})
    with pytest.raises(ConfigError, match=r"^model\.config: the tiny preset's shipped weights do not fit this model"
                                          r".*model\.init=random"):
        build_model(r.model, seed=0)


def test_the_banner_and_run_json_say_what_the_run_started_from(tmp_path, capsys):
    data = corpus(tmp_path / "data", "asr", n=4)
    train(stage_recipe("speech", [f"data.train={data}", "max_steps=2", "training.micro_batch_size=2"]),
          tmp_path / "pre", progress=False)
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("[molora] starting weights:"))
    assert line.startswith(f"[molora] starting weights: preset tiny, shipped weights {preset_weights('tiny')} (sha256 ")
    assert line.endswith("+ fresh projectors and LoRAs (seed 0)")
    run = json.loads((tmp_path / "pre" / "run.json").read_text())
    assert run["start"]["from"] == "pretrained" and len(run["start"]["sha256"]) == 16
    first_pretrained = json.loads((tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    train(stage_recipe("speech", [f"data.train={data}", "max_steps=2", "training.micro_batch_size=2",
                                  "model.init=random"]), tmp_path / "rand", progress=False)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[molora] starting weights:"))
    assert line == "[molora] starting weights: random (preset tiny, seed 0: model.init=random)"
    assert json.loads((tmp_path / "rand" / "run.json").read_text())["start"]["from"] == "random"
    first_random = json.loads((tmp_path / "rand" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    # a random tiny model starts near ln(vocab) (its logits are near uniform); the pretrained one does not
    assert abs(first_random - math.log(1024)) < 0.5
    assert abs(first_pretrained - math.log(1024)) > 0.5
