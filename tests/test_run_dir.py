"""A training run's output folder: an existing run is neither restarted beside its checkpoints nor
resumed with another recipe, data or model; a finished run is not trained again; a file as
--output-dir, a full disk and Ctrl-C give one line with the next step; nothing written is lost."""
from __future__ import annotations

import errno
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datafactory import corpus, write_manifest
from molora.errors import ConfigError, MoLoRAError, RunError
from molora.stages.recipe import load_recipe
from molora.stages.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def recipe(data, **over):
    return load_recipe("tiny-sft", {"data.train": str(data), "max_steps": 4, "save_every": 2,
                                    "training.micro_batch_size": 2, **over})


def metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


@pytest.fixture()
def data(tmp_path):
    return corpus(tmp_path / "data", "mixed", n=4)


def _kill_after_step_2(tmp_path, data, out):
    """A run stopped right after its step-2 checkpoint (as after kill -9)."""
    import shutil

    train(recipe(data), out, progress=False)
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    state = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**state, "status": "running"}))
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics(out)[:2]))


def test_rerun_without_resume_is_refused_and_overwrite_replaces(tmp_path, data):
    out = tmp_path / "run"
    first = train(recipe(data), out, progress=False)
    (out / "notes.txt").write_text("mine")  # something of the user's in the folder
    before = (out / "final" / "model.safetensors").read_bytes()
    with pytest.raises(RunError, match=r"already holds a training run \(finished at step 4\); pass --resume to continue "
                                       r"it, --overwrite to replace it"):
        train(recipe(data), out, progress=False)
    assert (out / "final" / "model.safetensors").read_bytes() == before  # nothing touched
    again = train(recipe(data), out, progress=False, overwrite=True)
    assert again["steps"] == first["steps"] == 4
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]  # one run's rows, not two
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes only what a run writes


def test_resume_refuses_a_changed_recipe_data_or_model(tmp_path, data):
    out = tmp_path / "run"
    _kill_after_step_2(tmp_path, data, out)
    recorded = (out / "recipe.json").read_text()
    with pytest.raises(RunError, match=r"step-2\): seed: 0 -> 5; training\.lr: 0\.01 -> 0\.0002\. Pass "
                                       r"--resume-anyway"):
        train(recipe(data, seed=5, **{"training.lr": 2e-4}), out, resume=True, progress=False)
    assert (out / "recipe.json").read_text() == recorded  # not overwritten by the refused command
    rows = json.loads(data.read_text().splitlines()[0])
    changed = write_manifest(data.parent / "changed.jsonl", [rows] + [json.loads(l) for l in
                                                                      data.read_text().splitlines()[1:]][::-1])
    with pytest.raises(RunError, match=r"data\.train: .*; training data: fingerprint manifest:"):
        train(recipe(changed), out, resume=True, progress=False)
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")  # same path, other rows
    with pytest.raises(RunError, match=r"training data: fingerprint manifest:\w+ -> manifest:\w+ \(the rows "
                                       r"changed\)"):
        train(recipe(data), out, resume=True, progress=False)


def test_resume_refuses_another_starting_model(tmp_path, data):
    base = tmp_path / "base"
    train(recipe(data, max_steps=1, save_every=0), base, progress=False)
    out = tmp_path / "run"
    _kill_after_step_2(tmp_path, data, out)
    with pytest.raises(RunError, match=r"model\.path: .*starting model: files"):
        train(recipe(data, **{"model.path": str(base / "final")}), out, resume=True, progress=False)


def test_resume_anyway_continues_and_records_the_change(tmp_path, data):
    out = tmp_path / "run"
    _kill_after_step_2(tmp_path, data, out)
    summary = train(recipe(data, **{"training.lr": 2e-3}), out, resume_anyway=True, progress=False)
    assert summary["steps"] == 4 and [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["resumed_with_changes"] == [["training.lr: 0.01 -> 0.002"]]
    # step 3 runs at the new rate under the schedule (4 steps, warmup 1: factors 1, 1, 0.75, 0.25)
    assert [r["lr"] for r in metrics(out)][2:] == pytest.approx([2e-3 * 0.75, 2e-3 * 0.25])


def test_resume_of_a_finished_run_trains_nothing(tmp_path, data, capsys):
    out = tmp_path / "run"
    train(recipe(data), out, progress=False)
    weights = (out / "final" / "model.safetensors").read_bytes()
    rows = (out / "metrics.jsonl").read_text()
    summary = train(recipe(data), out, resume=True, progress=False)
    assert summary["already_finished"] and summary["steps"] == 4
    assert "this run finished at step 4" in capsys.readouterr().out
    assert (out / "final" / "model.safetensors").read_bytes() == weights and (out / "metrics.jsonl").read_text() == rows


def test_output_dir_that_is_a_file(tmp_path, data):
    f = tmp_path / "taken"
    f.write_text("keep me")
    with pytest.raises(RunError, match="--output-dir is a file, not a directory"):
        train(recipe(data), f, progress=False)
    with pytest.raises(RunError, match="is a file, so the output folder cannot be created under it"):
        train(recipe(data), f / "sub", progress=False)
    assert f.read_text() == "keep me"


def test_disk_full_while_checkpointing_keeps_earlier_checkpoints(tmp_path, data, monkeypatch, capsys):
    """torch.save reports a full disk as a RuntimeError ("unexpected pos"); the run stops with
    OSError(ENOSPC), removes its partial folder, keeps step-2; the CLI prints one line."""
    import torch

    from molora.cli import handle

    real_save = torch.save

    def save(obj, f, *a, **k):
        if "step-4" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 224192 vs 224084")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    r = recipe(data, max_steps=6)
    with pytest.raises(OSError) as e:
        train(r, out, progress=False)
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]  # no partial step-4 left

    class Args:
        command, output_dir = "train", str(out)

        @staticmethod
        def func(_):
            raise e.value

    code = handle(Args, ["train", "--recipe", "tiny-sft", "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "no space left on device (free some space or choose another folder)" in err
    assert f"the newest checkpoint is {out / 'checkpoints' / 'step-2'}" in err and err.endswith("--resume")


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_that_command_resumes(tmp_path, data):
    out = tmp_path / "run"
    # a run far longer than the test: interrupted once any checkpoint is written (the older ones rotate
    # away with keep_last, so no particular step is waited for)
    cmd = ["train", "--recipe", "tiny-sft", f"data.train={data}", "max_steps=100000", "save_every=2",
           "training.micro_batch_size=2", "--output-dir", str(out)]
    p = subprocess.Popen([sys.executable, "-m", "molora.cli", *cmd], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not list((out / "checkpoints").glob("step-*")) and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before it was interrupted"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    line = next(l for l in err.splitlines() if l.startswith("molora train: interrupted"))
    assert "the newest checkpoint is" in line and "Traceback" not in err
    resume = line.split("continue with: ")[1]
    assert resume.startswith("molora train ") and resume.endswith(" --resume")
    # the printed command is the one to run (here with fewer steps, so the test ends: --resume-anyway)
    import shlex

    newest = int(re.search(r"step-(\d+)", line).group(1))
    args = shlex.split(resume)[1:]
    args = [a if a != "max_steps=100000" else f"max_steps={newest + 4}" for a in args] + ["--resume-anyway"]
    r = subprocess.run([sys.executable, "-m", "molora.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == newest + 4


def test_empty_manifest_names_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match=rf"{empty}: no rows: the data is empty"):
        train(recipe(empty), tmp_path / "out", progress=False)


def test_every_sample_skipped_is_an_error_not_a_silent_run(tmp_path):
    bad = write_manifest(tmp_path / "bad.jsonl", [{"audio": "missing.wav", "text": "x"}])
    with pytest.raises(MoLoRAError, match="nothing was trained: every sample was skipped"):
        train(load_recipe("tiny-speech", {"data.train": str(bad), "max_steps": 2}), tmp_path / "out",
              progress=False)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"][0]["item"].endswith("missing.wav")


@pytest.mark.parametrize("command, error, code, expected", [
    ("eval", KeyboardInterrupt(), 130, "molora eval: interrupted; rerun the same command to continue: the items "
                                       "already written are kept"),
    ("quickstart", KeyboardInterrupt(), 130, "molora quickstart: interrupted; rerun it to start again (the "
                                             "synthetic corpora built so far are cached)"),
    ("eval", PermissionError(errno.EACCES, "Permission denied", "/ro/out"), 1,
     "molora eval: error: /ro/out: permission denied (check the folder's permissions or choose another one)"),
    ("convert", NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f/x"), 1,
     "molora convert: error: /f/x: a part of this path is a file, not a folder (choose another path)"),
    ("convert", PermissionError(errno.EPERM, "Operation not permitted", "/ro/x"), 1,  # chattr +i, or root-squash
     "molora convert: error: /ro/x: operation not permitted (check the folder's permissions or choose another one)"),
    ("eval", OSError(errno.ENOSPC, "No space left on device", "/full/out"), 1,  # rerunning after freeing space helps
     "molora eval: error: /full/out: no space left on device (free some space or choose another folder); rerun "
     "the same command to continue: the items already written are kept"),
    ("chat", ConfigError("must be > 0", "temperature"), 2, "molora chat: error: temperature: must be > 0"),
    ("train", KeyboardInterrupt(), 130, "molora train: interrupted; no checkpoint was written yet (save_every=N "
                                        "writes them); start again with: molora train --recipe tiny-sft "
                                        "--output-dir OUT --overwrite"),
])
def test_the_top_level_handler_gives_one_line_and_the_next_step(tmp_path, capsys, command, error, code, expected):
    from molora.cli import handle

    argv = {"convert": ["convert", "tiny", "/f/x"],
            "train": ["train", "--recipe", "tiny-sft", "--output-dir", "OUT", "--resume"]}.get(command, [command])

    class Args:
        output_dir = str(tmp_path / "nothing-here")

        @staticmethod
        def func(_):
            raise error

    Args.command = command
    assert handle(Args, argv) == code
    assert capsys.readouterr().err.strip() == expected
