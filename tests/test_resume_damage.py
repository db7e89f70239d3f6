"""--resume past damage: a damaged newest checkpoint is named (folder, file, reason) and the newest
intact one is used; no intact one is one line saying what to do; a torn last line of metrics.jsonl is
dropped with a message; a model of another size is refused before anything is written; an
interruption while writing leaves no temporary file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from datafactory import corpus
from molora.errors import ConfigError, RunError
from molora.stages.recipe import load_recipe
from molora.stages.trainer import train


def recipe(data, **over):
    return load_recipe("tiny-sft", {"data.train": str(data), "max_steps": 6, "save_every": 2, "keep_last": 3,
                                    "training.micro_batch_size": 2, **over})


def steps(out: Path) -> list[int]:
    return [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped after its step-4 checkpoint (checkpoints step-2 and step-4, metrics up to step 4)."""
    root = tmp_path_factory.mktemp("stopped")
    data = corpus(root / "data", "mixed", n=4)
    out = root / "run"
    train(recipe(data), out, progress=False)
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    state = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**state, "status": "running"}))
    rows = (out / "metrics.jsonl").read_text().splitlines()[:4]
    (out / "metrics.jsonl").write_text("".join(l + "\n" for l in rows))
    return data, out


@pytest.fixture()
def run_copy(stopped, tmp_path):
    data, out = stopped
    shutil.copytree(out, tmp_path / "run")
    return data, tmp_path / "run"


def _half(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


DAMAGE = {
    "optimizer.pt": (lambda p: p.unlink(), "missing"),
    "trainer_state.json": (_half, "unreadable"),
    "trainable.safetensors": (_half, "not a complete safetensors file"),
    "rng-0.pt": (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(run_copy, name, capsys):
    data, out = run_copy
    damage, reason = DAMAGE[name]
    damage(out / "checkpoints" / "step-4" / name)
    summary = train(recipe(data), out, resume=True, progress=False)
    printed = capsys.readouterr().out
    line = next(l for l in printed.splitlines() if "is damaged" in l)
    assert line.startswith(f"[molora] --resume: {out / 'checkpoints' / 'step-4'} is damaged ({name}: {reason}")
    assert line.endswith("resuming from step-2, the newest intact checkpoint")
    assert summary["steps"] == 6 and steps(out) == [1, 2, 3, 4, 5, 6]  # rows 3-4 trained again, logged once


def test_no_intact_checkpoint_is_one_line_saying_what_to_do(run_copy):
    data, out = run_copy
    (out / "checkpoints" / "step-4" / "optimizer.pt").unlink()
    (out / "checkpoints" / "step-2" / "rng-0.pt").write_bytes(b"")
    recorded = (out / "run.json").read_text()
    with pytest.raises(RunError) as e:
        train(recipe(data), out, resume=True, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{out / 'checkpoints'}: --resume: no intact checkpoint to continue from (step-4: "
                          "optimizer.pt: missing; step-2: rng-0.pt: empty (0 bytes)); start again with --overwrite")
    assert "\n" not in msg and (out / "run.json").read_text() == recorded


def test_a_torn_last_metrics_line_is_dropped_and_said(run_copy, capsys):
    data, out = run_copy
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "substep": "sf')  # the write a kill cut short
    train(recipe(data), out, resume=True, progress=False)
    assert f"[molora] {out / 'metrics.jsonl'}: dropped unreadable line(s) 5 (a write cut short" in capsys.readouterr().out
    assert steps(out) == [1, 2, 3, 4, 5, 6]


def test_resume_anyway_with_another_model_size_is_refused_before_anything_is_written(run_copy):
    data, out = run_copy
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = {"model.config": {"adapters": {"vision": {"r": 4, "alpha": 8}, "speech": {"r": 10, "alpha": 20}}}}
    with pytest.raises(RunError) as e:
        train(recipe(data, **other), out, resume_anyway=True, progress=False)
    msg = str(e.value)
    weights = out / "checkpoints" / "step-4" / "trainable.safetensors"
    assert msg.startswith(f"{weights}: --resume: tensor ") and "lora_A.vision" in msg
    assert "has shape [8, " in msg and "in the checkpoint and [4, " in msg and "in this run's model" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # run.json, recipe.json as they were


def test_a_bad_model_config_writes_nothing(tmp_path):
    data = corpus(tmp_path / "data", "mixed", n=4)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="hiden_size"):
        train(recipe(data, **{"model.config": {"hiden_size": 2}}), out, progress=False)
    assert not out.exists()  # before: run.json and recipe.json, and a rerun was refused as "already holds a run"


def test_an_interruption_while_writing_final_leaves_no_temporary_folder(tmp_path, monkeypatch):
    from molora import MoLoRAProcessor
    from molora.signals import Terminated

    data = corpus(tmp_path / "data", "mixed", n=4)
    out = tmp_path / "run"

    def stopped_here(self, directory):
        raise Terminated()  # SIGTERM while final/ is being written

    monkeypatch.setattr(MoLoRAProcessor, "save_pretrained", stopped_here)
    with pytest.raises(Terminated):
        train(recipe(data, max_steps=2, save_every=0), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".molora.lock", "metrics.jsonl", "recipe.json", "run.json",
                                                      "tensorboard"]


def test_an_interrupted_json_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os

    from molora.signals import Terminated
    from molora.stages.run_state import write_json_atomic

    def replace(src, dst):
        raise Terminated()

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Terminated):
        write_json_atomic(tmp_path / "run.json", {"status": "running"})
    assert list(tmp_path.iterdir()) == []
