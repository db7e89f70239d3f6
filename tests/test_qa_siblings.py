"""Failures found by an independent check of issues 23 / 29 through the real CLI, on inputs the
project's own tests did not make: two writers into one checkpoint folder, a folder molora may not
write, an eval folder and a training folder mistaken for one another, and the modes of eval results.
What is checked is what the user sees: the exit code, the one stderr line, and the files."""
from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from conftest import random_tiny
from molora import MoLoRAModel, MoLoRAProcessor
from molora.checkpoint import detect_layout
from molora.cli import main as cli
from test_convert_safety import _one_line, _tree


@pytest.fixture(scope="module")
def model():
    return random_tiny(seed=5)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("src") / "final"
    model.save_pretrained(d)
    MoLoRAProcessor.from_config(model.config).save_pretrained(d)
    return d


# -- two writers, one destination ---------------------------------------------------------------------------

def test_a_second_convert_into_the_same_destination_meanwhile_does_not_replace_it(checkpoint, tmp_path, capsys,
                                                                                   monkeypatch):
    """Two `molora convert` into one absent DST at once: both used to exit 0, and the one that finished
    last silently replaced the other's complete checkpoint (no --force given), its summary describing
    files that were no longer there."""
    import molora.checkpoint as ckpt

    dst = tmp_path / "dst"
    real = ckpt.write_checkpoint_files
    calls = []

    def write_while_another_writes(*a, **k):
        if not calls:  # the other convert starts and finishes while this one is writing
            calls.append(1)
            assert cli(["convert", str(checkpoint), str(dst), "--layout", "phi4_multimodal"]) == 0
        return real(*a, **k)

    monkeypatch.setattr(ckpt, "write_checkpoint_files", write_while_another_writes)
    assert cli(["convert", str(checkpoint), str(dst), "--layout", "phi4mm"]) == 2
    err = capsys.readouterr().err
    line = [l for l in err.splitlines() if l.startswith("molora convert: error:")]
    assert len(line) == 1 and "Traceback" not in err
    assert line[0].startswith(f"molora convert: error: {dst}: another process wrote ")
    assert "config.json" in line[0] and "nothing was moved in" in line[0]
    # the checkpoint the other convert reported is intact, and nothing of this one is left behind
    assert detect_layout(dst) == "phi4_multimodal"
    MoLoRAModel.from_pretrained(dst)
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")]
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]


def test_a_second_save_pretrained_into_the_same_folder_meanwhile_is_refused(model, tmp_path, monkeypatch):
    import molora.checkpoint as ckpt
    from molora.errors import CheckpointError

    dst = tmp_path / "out"
    model.save_pretrained(dst)
    before = _tree(dst)
    real = ckpt.write_checkpoint_files
    calls = []

    def write_while_another_writes(*a, **k):
        if not calls:
            calls.append(1)
            model.save_pretrained(dst, layout="phi4mm")
        return real(*a, **k)

    monkeypatch.setattr(ckpt, "write_checkpoint_files", write_while_another_writes)
    with pytest.raises(CheckpointError, match="another process wrote"):
        model.save_pretrained(dst, layout="phi4_multimodal")
    assert detect_layout(dst) == "phi4mm" and _tree(dst) != before


# -- a folder molora may not write -----------------------------------------------------------------------------

def test_a_destination_it_may_not_create_is_named_as_given_not_by_its_staging_name(checkpoint, tmp_path, capsys,
                                                                                    monkeypatch):
    """`molora convert SRC ro/x` under a folder it may not write named `ro/.x.tmp-puuk6lxr` (a random
    staging name the user never typed) and advised rerunning the very same command."""
    import tempfile

    def refused(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(k.get("dir", "."), ".x.tmp-abc123"))

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    dst = tmp_path / "ro" / "x"
    (tmp_path / "ro").mkdir()
    assert cli(["convert", str(checkpoint), str(dst)]) == 1
    assert _one_line(capsys) == (f"molora convert: error: {dst}: permission denied (check the folder's permissions "
                                 "or choose another one)")


# -- an eval folder and a training folder ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    from datafactory import corpus

    root = tmp_path_factory.mktemp("train")
    data = corpus(root / "data", "asr", n=4)
    out = root / "run"
    assert cli(["train", "--recipe", "tiny-speech", f"data.train={data}", "max_steps=1",
                "training.micro_batch_size=2", "--output-dir", str(out)]) == 0
    return out, data


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_eval_overwrite_does_not_replace_a_training_runs_record(train_run, tmp_path, capsys):
    """`molora eval asr --output-dir RUN --overwrite` on a training run's folder (following the advice
    the refusal itself gave) replaced the run's run.json and summary.json: --resume then had no record."""
    run, data = train_run
    out = _copy(run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    capsys.readouterr()
    args = ["eval", "asr", "--model", str(run / "final"), "--manifest", str(data), "--output-dir", str(out),
            "--max-new-tokens", "2", "--device", "cpu"]
    for extra in ([], ["--overwrite"]):
        assert cli(args + extra) == 2
        line = _one_line(capsys)
        assert line.startswith(f"molora eval: error: {out / 'run.json'}: ") and "molora train" in line
        assert "choose another --output-dir" in line
        assert _tree(out) == before


def test_train_into_an_eval_folder_neither_overwrites_nor_resumes_its_results(train_run, tmp_path, capsys):
    """`molora train --output-dir EVAL` said the folder "already holds a training run", and --overwrite
    (or --resume) then replaced the evaluation's run.json and summary.json with the training run's."""
    run, data = train_run
    ev = tmp_path / "ev"
    assert cli(["eval", "asr", "--model", str(run / "final"), "--manifest", str(data), "--output-dir", str(ev),
                "--max-new-tokens", "2", "--device", "cpu"]) == 0
    before = _tree(ev)
    capsys.readouterr()
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert cli(["train", "--recipe", "tiny-speech", f"data.train={data}", "max_steps=1", "--output-dir", str(ev),
                    *extra]) == 2
        line = _one_line(capsys)
        assert line.startswith(f"molora train: error: {ev}: ") and "molora eval asr" in line
        assert "choose another --output-dir" in line and "already holds a training run" not in line
        assert _tree(ev) == before


def test_eval_results_get_the_modes_a_plain_open_gives(train_run, tmp_path):
    """run.json / summary.json / summary.md were written 0600 (mkstemp's private mode) while the result
    JSONL beside them was 0644: another account (a dashboard, a colleague) could not read the summary."""
    run, data = train_run
    out = tmp_path / "ev"
    assert cli(["eval", "asr", "--model", str(run / "final"), "--manifest", str(data), "--output-dir", str(out),
                "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert cli(["eval", "rescore", str(out)]) == 0
    mask = os.umask(0)
    os.umask(mask)
    for name in ("run.json", "summary.json", "summary.md", "summary.rescored-open-asr-2026.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name


# -- convert --summary-json ---------------------------------------------------------------------------------

def test_summary_json_under_a_missing_folder_is_written_and_a_folder_is_refused_before_converting(
        checkpoint, tmp_path, capsys):
    """`--summary-json nodir/x/s.json` converted, then failed (exit 1) saying "the destination is as it was
    (nothing is moved in ...)" although DST had been written; rerunning that command was then refused."""
    dst, summary = tmp_path / "dst", tmp_path / "nodir" / "x" / "s.json"
    assert cli(["convert", str(checkpoint), str(dst), "--summary-json", str(summary)]) == 0
    assert json.loads(summary.read_text())["destination"] == str(dst)
    capsys.readouterr()
    assert cli(["convert", str(checkpoint), str(tmp_path / "dst2"), "--summary-json", str(tmp_path)]) == 2
    assert _one_line(capsys) == (f"molora convert: error: {tmp_path}: is a folder; --summary-json takes the path of "
                                 "a file to write")
    assert not (tmp_path / "dst2").exists()


def test_eval_output_dir_under_a_file_is_bad_input_like_train_and_convert(tmp_path, capsys):
    """`--output-dir afile/x` was exit 1 (an OSError from the lock) in eval, exit 2 in train and convert."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "x"
    assert cli(["eval", "asr", "--model", "tiny", "--manifest", str(tmp_path / "m.jsonl"), "--output-dir", str(out)]) == 2
    assert _one_line(capsys) == f"molora eval: error: {out}: {tmp_path / 'afile'} is a file, not a folder: choose another path"


def test_an_adapter_folder_that_is_a_file_is_named_not_skipped(model, tmp_path):
    """A transformers-layout checkpoint whose `speech-lora` was a file (a bad copy, a zip) loaded without
    the speech LoRA, silently: speech then ran on the bare backbone."""
    import shutil

    from molora.errors import CheckpointError

    d = tmp_path / "native"
    model.save_pretrained(d, layout="phi4_multimodal")
    shutil.rmtree(d / "speech-lora")
    (d / "speech-lora").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match=r"speech-lora: is a file, not a PEFT adapter folder"):
        MoLoRAModel.from_pretrained(d)
