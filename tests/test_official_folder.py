"""The ``phi4mm`` export is a drop-in for the official folder: converting or exporting from an official
checkpoint carries every non-weight file over unchanged (remote code included, never run); exporting
a model that did not come from one takes ``--base DIR`` / ``base=DIR``, and without it says in one
line what the folder lacks."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from conftest import tiny_config
from molora import MoLoRAModel, MoLoRAProcessor
from molora.cli import main as cli
from molora.convert import convert

# a remote-code module that leaves a mark if anything imports or runs it
REMOTE_CODE = "from pathlib import Path\nPath(__file__).with_name('EXECUTED').write_text('ran')\n"
OFFICIAL_FILES = {  # name -> content, beside the weights of an official folder
    "modeling_phi4mm.py": REMOTE_CODE, "configuration_phi4mm.py": REMOTE_CODE, "processing_phi4mm.py": REMOTE_CODE,
    "speech_conformer_encoder.py": REMOTE_CODE, "vision_siglip_navit.py": REMOTE_CODE,
    "generation_config.json": json.dumps({"_from_model_config": True, "bos_token_id": 256, "eos_token_id": [260, 256],
                                          "pad_token_id": 256, "transformers_version": "4.48.2"}, indent=2),
    "preprocessor_config.json": json.dumps({"auto_map": {"AutoProcessor": "processing_phi4mm.Phi4MMProcessor"},
                                            "processor_class": "Phi4MMProcessor", "dynamic_hd": 36}),
    "processor_config.json": json.dumps({"auto_map": {"AutoProcessor": "processing_phi4mm.Phi4MMProcessor"},
                                         "processor_class": "Phi4MMProcessor"}),
    "added_tokens.json": json.dumps({"<|end|>": 260}), "README.md": "the official model card\n",
    "LICENSE": "MIT\n", "figures/chart.txt": "a figure\n",
}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A tiny model in the official layout as Microsoft ships it: config.json without molora's section
    and with the folder's own keys, the tokenizer, remote code, processor and generation files."""
    d = tmp_path_factory.mktemp("official") / "Phi-4-multimodal-instruct"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the folder is completed by hand below
        MoLoRAModel(tiny_config()).save_pretrained(d, layout="phi4mm")
    config = json.loads((d / "config.json").read_text())
    del config["molora"]
    config.update(_name_or_path="Phi-4-multimodal-instruct", transformers_version="4.48.2",
                  _attn_implementation="flash_attention_2")
    (d / "config.json").write_text(json.dumps(config))
    MoLoRAProcessor.from_config(tiny_config()).tokenizer.save_pretrained(str(d))
    for name, text in OFFICIAL_FILES.items():
        (d / name).parent.mkdir(exist_ok=True)
        (d / name).write_text(text)
    return d


def _non_weight_files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()
            and not p.name.endswith(".safetensors") and p.name not in ("config.json", "model.safetensors.index.json")
            and not p.relative_to(d).parts[0].endswith("-lora")}


def test_converting_an_official_folder_carries_every_file_over_unchanged(official, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["convert", str(official), str(out), "--layout", "phi4mm", "--dtype", "bfloat16"]) == 0
    printed = capsys.readouterr()
    assert "warning" not in printed.err and "copied from" in printed.out and "modeling_phi4mm.py" in printed.out
    theirs, ours = _non_weight_files(official), _non_weight_files(out)
    assert {k: ours.get(k) for k in theirs} == theirs  # byte for byte, figures/ and remote code included
    assert not (out / "EXECUTED").exists() and not (official / "EXECUTED").exists()  # never run
    config, source = json.loads((out / "config.json").read_text()), json.loads((official / "config.json").read_text())
    assert set(source) <= set(config)
    for key in ("_name_or_path", "transformers_version", "_attn_implementation", "auto_map"):
        assert config[key] == source[key]
    assert config["torch_dtype"] == "bfloat16" and config["hidden_size"] == tiny_config().backbone.hidden_size
    # the converted folder reads back as the same model, its weights rounded to bfloat16
    again = MoLoRAModel.from_pretrained(str(out)).state_dict()
    first = MoLoRAModel.from_pretrained(str(official)).state_dict()
    assert again.keys() == first.keys()
    assert all(torch.equal(again[k], first[k].to(torch.bfloat16)) for k in first)
    # a second conversion into the same folder replaces what the first copied (--force)
    assert cli(["convert", str(official), str(out), "--layout", "phi4mm", "--force"]) == 0


def test_export_of_a_model_without_an_official_origin_takes_a_base(official, tmp_path, capsys):
    src = tmp_path / "trained"
    MoLoRAModel(tiny_config()).save_pretrained(src)  # molora's own layout
    MoLoRAProcessor.from_config(tiny_config()).save_pretrained(src)
    bare = tmp_path / "bare"
    assert cli(["convert", str(src), str(bare), "--layout", "phi4mm"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("molora convert: warning: ")
    assert "remote-code modules" in err[0] and "modeling_phi4mm.py" in err[0] and "--base DIR" in err[0]
    # what molora derives is there: official processor files, generation config, tokenizer
    assert json.loads((bare / "generation_config.json").read_text())["eos_token_id"] == [260, 256]
    pre = json.loads((bare / "preprocessor_config.json").read_text())
    assert pre["processor_class"] == "Phi4MMProcessor" and pre["dynamic_hd"] == tiny_config().vision.dynamic_hd
    assert json.loads((bare / "processor_config.json").read_text())["auto_map"]["AutoProcessor"] == \
        "processing_phi4mm.Phi4MMProcessor"
    assert (bare / "tokenizer.json").exists() and MoLoRAProcessor.from_pretrained(str(bare)).tokenizer is not None

    based = tmp_path / "based"
    assert cli(["convert", str(src), str(based), "--layout", "phi4mm", "--base", str(official)]) == 0
    assert "warning" not in capsys.readouterr().err
    theirs, ours = _non_weight_files(official), _non_weight_files(based)
    assert {k: ours.get(k) for k in theirs} == theirs
    assert json.loads((based / "config.json").read_text())["_name_or_path"] == "Phi-4-multimodal-instruct"


def test_save_pretrained_with_and_without_a_base(official, tmp_path):
    model = MoLoRAModel(tiny_config())
    with pytest.warns(UserWarning, match=r"lacks the remote-code modules .*modeling_phi4mm\.py.* and the tokenizer "
                                         r"files \(tokenizer\.json, tokenizer_config\.json\).*base="):
        model.save_pretrained(tmp_path / "bare", layout="phi4mm")
    assert (tmp_path / "bare" / "generation_config.json").exists()
    d = tmp_path / "based"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        written = model.save_pretrained(d, layout="phi4mm", base=official)
        assert "modeling_phi4mm.py" in written and "figures/" in written
        model.save_pretrained(d, layout="phi4mm", base=official)  # again into the same folder
    theirs, ours = _non_weight_files(official), _non_weight_files(d)
    assert {k: ours.get(k) for k in theirs} == theirs
    assert not (d / "EXECUTED").exists()


@pytest.mark.parametrize("args, item, reason", [
    (["--base", "{missing}"], "{missing}", "no such directory"),
    (["--base", "{notofficial}"], "{notofficial}/config.json", "model_type is 'molora'"),
    (["--layout", "molora", "--base", "{official}"], "{official}", "--base is for --layout phi4mm only"),
])
def test_a_bad_base_is_one_line(official, tmp_path, capsys, args, item, reason):
    notofficial = tmp_path / "notofficial"
    MoLoRAModel(tiny_config()).save_pretrained(notofficial)
    names = {"missing": tmp_path / "nope", "notofficial": notofficial, "official": official}
    args = [a.format(**names) for a in args]
    layout = [] if "--layout" in args else ["--layout", "phi4mm"]
    assert cli(["convert", "tiny", str(tmp_path / "out"), *layout, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{item.format(**names)}: " in err[0] and reason in err[0], err
    assert not (tmp_path / "out").exists()


def test_an_official_checkpoint_from_the_hub_brings_its_remote_code(official, tmp_path, monkeypatch):
    """A hub id is fetched with allow-patterns (huggingface_hub's filtering, emulated on the official
    folder): the remote-code modules and documents come along, so the conversion carries them."""
    import fnmatch
    import shutil

    import huggingface_hub

    def snapshot_download(repo_id, allow_patterns):
        out = tmp_path / "hub" / repo_id.replace("/", "--")
        for f in official.rglob("*"):
            rel = str(f.relative_to(official))
            if f.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out / rel)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    summary = convert("microsoft/Phi-4-multimodal-instruct", tmp_path / "out", layout="phi4mm")
    assert summary["warnings"] == [] and "modeling_phi4mm.py" in summary["carried"]
    for name in ("modeling_phi4mm.py", "processing_phi4mm.py", "README.md", "LICENSE", "added_tokens.json"):
        assert (tmp_path / "out" / name).read_bytes() == (official / name).read_bytes(), name


def test_a_phi4mm_source_without_remote_code_still_warns(tmp_path, capsys):
    """A phi4mm folder molora wrote without a base is its own base for the next conversion, and what it
    lacks is named again."""
    assert cli(["convert", "tiny", str(tmp_path / "a"), "--layout", "phi4mm"]) == 0
    capsys.readouterr()
    assert cli(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--layout", "phi4mm"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'b'} lacks the remote-code modules" in err[0]


@pytest.mark.parametrize("where", ["inside", "holding"])
def test_a_base_and_a_destination_that_hold_one_another_are_refused(official, tmp_path, capsys, where):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(official, base)
    dst = base / "export" if where == "inside" else tmp_path
    before = sorted(p.name for p in base.iterdir())
    assert cli(["convert", "tiny", str(dst), "--layout", "phi4mm", "--base", str(base), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{base}: the base folder and the destination" in err[0], err
    assert sorted(p.name for p in base.iterdir()) == before
    with pytest.raises(Exception, match="must not hold one another"):
        MoLoRAModel(tiny_config()).save_pretrained(base / "export2", layout="phi4mm", base=base)
