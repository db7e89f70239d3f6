"""`molora convert` and `save_pretrained` never delete what molora did not write, never write into or
over their source, and fail in one line (exit 2: bad input, exit 1: the disk) leaving source and
destination as they were."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import SafetensorError

from conftest import random_tiny, tiny_config
from molora import MoLoRAModel, MoLoRAProcessor
from molora.checkpoint import detect_layout
from molora.cli import main as cli
from molora.errors import CheckpointError

ENOSPC_TEXT = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


@pytest.fixture(scope="module")
def model():
    return random_tiny(seed=3)


def _checkpoint(model, d, layout="molora"):
    model.save_pretrained(d, layout=layout)
    MoLoRAProcessor.from_config(model.config).save_pretrained(d)
    return d


def _tree(d) -> dict:
    """Every file under ``d`` (hidden ones too) -> a digest of its bytes."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# -- where convert may write -------------------------------------------------------------------------------

def test_convert_into_the_folder_holding_the_source_is_refused(model, tmp_path, capsys):
    """The reported case: `molora convert parent/final parent --layout phi4mm --force`."""
    parent = tmp_path / "parent"
    src = _checkpoint(model, parent / "final")
    (parent / "notes.txt").write_text("my notes")
    before = _tree(parent)
    assert cli(["convert", str(src), str(parent), "--layout", "phi4mm", "--force"]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"molora convert: error: {parent}: the destination holds the source checkpoint {src}")
    assert _tree(parent) == before


def test_convert_into_a_folder_inside_the_source_is_refused(model, tmp_path, capsys):
    src = _checkpoint(model, tmp_path / "src")
    before = _tree(src)
    for dst in (src / "vision-lora", src / "out"):
        assert cli(["convert", str(src), str(dst), "--force"]) == 2
        assert f"{dst}: the destination is inside the source checkpoint {src}" in _one_line(capsys)
    assert _tree(src) == before


def test_force_refuses_a_folder_holding_other_files(model, tmp_path, capsys):
    src = _checkpoint(model, tmp_path / "src")
    dst = _checkpoint(model, tmp_path / "dst", layout="phi4mm")
    (dst / "notes.txt").write_text("mine")
    (dst / "runs").mkdir()
    before = _tree(dst)
    assert cli(["convert", str(src), str(dst), "--force"]) == 2
    line = _one_line(capsys)
    assert f"{dst}: it holds notes.txt, runs/, which molora did not write" in line and "--force" in line
    assert _tree(dst) == before
    # a folder of checkpoint files only (an earlier convert, sharded): replaced, no stale shard left
    (dst / "notes.txt").unlink()
    (dst / "runs").rmdir()
    assert cli(["convert", str(src), str(dst), "--max-shard-size", "400KB", "--force"]) == 0
    assert cli(["convert", str(src), str(dst), "--force"]) == 0
    assert detect_layout(dst) == "molora"
    assert sorted(p.name for p in dst.glob("*.safetensors")) == ["model.safetensors"]
    assert not (dst / "model.safetensors.index.json").exists()


def test_a_destination_under_a_file_is_named(model, tmp_path, capsys):
    src = _checkpoint(model, tmp_path / "src")
    (tmp_path / "file.txt").write_text("x")
    dst = tmp_path / "file.txt" / "out"
    assert cli(["convert", str(src), str(dst)]) == 2
    line = _one_line(capsys)
    assert f"{dst}: {tmp_path / 'file.txt'} is a file, not a folder" in line
    assert "already exists" not in line and "--force" not in line
    assert (tmp_path / "file.txt").read_text() == "x"


# -- the processor --------------------------------------------------------------------------------------------

def test_a_processor_that_cannot_be_read_is_an_error(model, tmp_path, capsys):
    src = _checkpoint(model, tmp_path / "src")
    (src / "tokenizer.json").write_text("{broken")
    assert cli(["convert", str(src), str(tmp_path / "out")]) == 2
    line = _one_line(capsys)
    assert f"{src}: cannot read the processor / tokenizer (" in line and "tokenizer.json" in line
    assert "--no-processor" in line
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert cli(["convert", str(src), str(tmp_path / "out"), "--no-processor"]) == 0  # the model only, as asked
    assert "processor: not asked for" in capsys.readouterr().out


def test_a_source_without_a_tokenizer_converts_with_a_warning(tmp_path, capsys):
    torch.manual_seed(0)
    bare = tmp_path / "bare"
    MoLoRAModel(tiny_config().replace(backbone={"vocab_size": 2048})).save_pretrained(bare, layout="phi4_multimodal")
    assert cli(["convert", str(bare), str(tmp_path / "out")]) == 0
    warning = _one_line(capsys)
    assert warning.startswith(f"molora convert: warning: {bare} has no tokenizer files, so {tmp_path / 'out'} has "
                              "none either")


# -- a full disk ----------------------------------------------------------------------------------------------

def _disk_full(monkeypatch):
    import molora.shard_writer

    def full(*args, **kwargs):
        raise SafetensorError(ENOSPC_TEXT)

    monkeypatch.setattr(molora.shard_writer, "save_file", full)  # safetensors' writer, as molora's shard writer calls it


def test_convert_on_a_full_disk_is_one_line_and_changes_nothing(model, tmp_path, capsys, monkeypatch):
    src = _checkpoint(model, tmp_path / "src")
    dst = _checkpoint(model, tmp_path / "dst", layout="phi4mm")
    before_src, before_dst = _tree(src), _tree(dst)
    _disk_full(monkeypatch)
    assert cli(["convert", str(src), str(tmp_path / "new")]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"molora convert: error: {tmp_path / 'new'}: no space left on device")
    assert "the destination is as it was" in line
    assert cli(["convert", str(src), str(dst), "--force"]) == 1
    assert f"{dst}: no space left on device" in _one_line(capsys)
    assert _tree(src) == before_src and _tree(dst) == before_dst
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_save_pretrained_on_a_full_disk_is_enospc(model, tmp_path, monkeypatch):
    import errno

    d = tmp_path / "ckpt"
    _disk_full(monkeypatch)
    with pytest.raises(OSError) as e:
        model.save_pretrained(d)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(d)
    assert list(tmp_path.iterdir()) == []


# -- save_pretrained into a folder that holds other files -------------------------------------------------

def test_save_pretrained_keeps_what_it_did_not_write(model, tmp_path):
    """processor.save_pretrained(d) then model.save_pretrained(d), with the user's notes there too."""
    d = tmp_path / "ckpt"
    processor_files = MoLoRAProcessor.from_config(model.config).save_pretrained(d)
    (d / "notes.txt").write_text("mine")
    model.save_pretrained(d, max_shard_size="400KB")
    model.save_pretrained(d)  # the earlier shards and index go: they are the model's own files
    assert (d / "notes.txt").read_text() == "mine"
    assert all((d / f).exists() for f in processor_files)
    assert sorted(p.name for p in d.glob("*.safetensors")) == ["model.safetensors"]
    assert not (d / "model.safetensors.index.json").exists() and not list(d.glob(".molora-*"))
    again = MoLoRAModel.from_pretrained(str(d)).state_dict()
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    assert torch.equal(MoLoRAProcessor.from_pretrained(str(d))(text="hi")["input_ids"],
                       MoLoRAProcessor.from_config(model.config)(text="hi")["input_ids"])


def test_save_pretrained_refuses_to_replace_a_folder_holding_the_users_files(model, tmp_path):
    d = tmp_path / "ckpt"
    model.save_pretrained(d)
    (d / "vision-lora" / "notes.txt").write_text("mine")
    before = _tree(d)
    with pytest.raises(CheckpointError, match=r"ckpt: vision-lora is in the way: it holds files molora did not "
                                              r"write"):
        model.save_pretrained(d)
    assert _tree(d) == before


# -- bad sources through the command line: one line naming the file and the field -----------------------------

def _edit_config(d, change):
    cfg = json.loads((d / "config.json").read_text())
    change(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


BAD_SOURCES = [  # what is done to the source, the text the one line must hold
    (lambda d: (d / "config.json").write_text("[]"), "config.json: holds a JSON list, not an object"),
    (lambda d: _edit_config(d, lambda c: c["backbone"].update(hidden_size="128")),
     "config.json: backbone.hidden_size: must be an integer, got '128'"),
    (lambda d: _edit_config(d, lambda c: c["backbone"].update(hidden_size=256)),
     "config.json: backbone.hidden_size: is 256 but the weights have 128"),
    (lambda d: _edit_config(d, lambda c: c.update(model_type="gpt2")), "config.json: unknown model_type 'gpt2'"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
     "model.safetensors: unreadable safetensors file"),
    (lambda d: ((d / "model.safetensors").unlink(), (d / "model.safetensors.index.json").write_text("{oops")),
     "model.safetensors.index.json: not valid JSON"),
]


@pytest.mark.parametrize("damage, expected", BAD_SOURCES)
def test_a_bad_source_is_one_line(model, tmp_path, capsys, damage, expected):
    src = _checkpoint(model, tmp_path / "src")
    damage(src)
    before = _tree(src)
    assert cli(["convert", str(src), str(tmp_path / "out")]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"molora convert: error: {src}/") and expected in line, line
    assert _tree(src) == before and not (tmp_path / "out").exists()
