"""`molora convert`: every layout to every other and back keeps every tensor; dtype on request; a
preset converts with its tokenizer; transformers + peft load the native output; clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import eager_vision, randomize_, tiny_config
from molora import MoLoRAModel, MoLoRAProcessor
from molora.checkpoint import detect_layout, stored_dtype
from molora.cli import main as cli
from molora.convert import convert


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny random model (non-zero LoRAs) in molora's layout, with its processor."""
    d = tmp_path_factory.mktemp("convert") / "src"
    torch.manual_seed(0)
    model = MoLoRAModel(tiny_config()).eval()
    randomize_(model, seed=3)
    model.save_pretrained(d)
    MoLoRAProcessor.from_config(model.config).save_pretrained(d)
    return d, {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_layout_round_trips_bit_for_bit(source, tmp_path):
    src, original = source
    chain = ["phi4mm", "phi4_multimodal", "molora", "phi4_multimodal", "phi4mm", "molora"]
    prev = src
    for i, layout in enumerate(chain):
        out = tmp_path / f"{i}-{layout}"
        assert cli(["convert", str(prev), str(out), "--layout", layout, "--summary-json", str(tmp_path / "s.json")]) == 0
        assert detect_layout(out) == layout
        summary = json.loads((tmp_path / "s.json").read_text())
        assert summary["layout"] == layout and summary["dtype"] == "float32" and summary["processor"]
        assert summary["adapters"] == ["speech", "vision"]
        assert (out / "vision-lora" / "adapter_model.safetensors").exists()
        again = MoLoRAModel.from_pretrained(str(out))
        assert _same(again.state_dict(), original), layout
        prev = out
    a = MoLoRAProcessor.from_pretrained(str(src))(text="hello there")["input_ids"]
    b = MoLoRAProcessor.from_pretrained(str(prev))(text="hello there")["input_ids"]
    assert torch.equal(a, b)


def test_native_output_loads_in_transformers_and_peft(source, tmp_path):
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    src, _ = source
    out = tmp_path / "native"
    assert cli(["convert", str(src), str(out), "--layout", "phi4_multimodal"]) == 0
    ours = MoLoRAModel.from_pretrained(str(src)).eval()
    base = Phi4MultimodalForCausalLM.from_pretrained(str(out)).eval()
    eager_vision(base)
    ref = PeftModel.from_pretrained(base, str(out / "vision-lora"), adapter_name="vision").eval()
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 8]])
    with torch.no_grad():
        with ref.disable_adapter():
            expected = ref(input_ids=ids).logits
        got = ours(input_ids=ids).logits
    assert (got - expected).abs().max().item() <= 1e-4


def test_dtype_conversion_and_auto_keeps_the_stored_dtype(source, tmp_path):
    src, original = source
    half = tmp_path / "bf16"
    s = convert(str(src), half, layout="phi4mm", dtype="bfloat16")
    assert s["dtype"] == "bfloat16" and stored_dtype(half) == torch.bfloat16
    raw = load_file(str(half / "model.safetensors"))
    assert {v.dtype for v in raw.values() if v.is_floating_point()} == {torch.bfloat16}
    again = convert(str(half), tmp_path / "again")  # auto: stays bf16
    assert again["dtype"] == "bfloat16" and again["source_layout"] == "phi4mm"
    back = MoLoRAModel.from_pretrained(str(tmp_path / "again")).state_dict()
    assert all(torch.equal(back[k], original[k].to(back[k].dtype)) for k in original if original[k].is_floating_point())


def test_preset_converts_with_its_tokenizer(tmp_path):
    out = tmp_path / "tiny"
    s = convert("tiny", out)
    assert s["source_layout"] == "preset:tiny" and s["processor"]
    assert _same(MoLoRAModel.from_pretrained(str(out)).state_dict(), MoLoRAModel.from_pretrained("tiny").state_dict())
    text = "What is the total on the receipt?"
    assert torch.equal(MoLoRAProcessor.from_pretrained(str(out))(text=text)["input_ids"],
                       MoLoRAProcessor.from_pretrained("tiny")(text=text)["input_ids"])


def test_bad_requests_name_the_item(source, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    src, _ = source
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert cli(["convert", str(src), str(busy)]) == 2
    err = capsys.readouterr().err
    assert "busy" in err and "not empty" in err and "--force" in err
    assert (busy / "keep.txt").read_text() == "mine"  # nothing lost
    assert cli(["convert", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli(["convert", str(src), str(src), "--force"]) == 2
    assert "source checkpoint itself" in capsys.readouterr().err
    assert cli(["convert", "nobody-offline/no-such-model", str(tmp_path / "z")]) == 2  # a hub id, offline
    err = capsys.readouterr().err
    assert "nobody-offline/no-such-model" in err and "hub" in err and not (tmp_path / "z").exists()
    assert cli(["convert", str(src), str(src), "--force"]) == 2
    assert "source checkpoint itself" in capsys.readouterr().err
    assert cli(["convert", str(src), str(busy), "--force"]) == 2  # --force never deletes what molora did not write
    err = capsys.readouterr().err
    assert "keep.txt" in err and "did not write" in err and (busy / "keep.txt").read_text() == "mine"
    (busy / "keep.txt").unlink()
    assert cli(["convert", str(src), str(busy), "--layout", "phi4mm"]) == 0
    assert cli(["convert", str(src), str(busy), "--force"]) == 0  # a folder of checkpoint files: replaced
    assert detect_layout(busy) == "molora"
    with pytest.raises(SystemExit):
        cli(["convert", str(src), str(tmp_path / "y"), "--layout", "gguf"])


def test_the_summary_names_every_file_written(source, tmp_path, capsys):
    src, _ = source
    out = tmp_path / "out"
    assert cli(["convert", str(src), str(out), "--layout", "phi4mm", "--max-shard-size", "400KB",
                "--summary-json", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert sorted(s["model_files"] + s["processor_files"]) == on_disk
    assert "model.safetensors.index.json" in s["model_files"] and s["processor"]
    assert {"tokenizer.json", "molora_processor.json"} <= set(s["processor_files"])
    printed = capsys.readouterr().out
    assert "processor: wrote " + ", ".join(s["processor_files"]) in printed and "file(s)" in printed
    # a source with no tokenizer: the processor is media settings only, and the summary says so
    bare = tmp_path / "bare"
    torch.manual_seed(0)
    MoLoRAModel(tiny_config().replace(backbone={"vocab_size": 2048})).save_pretrained(bare, layout="phi4_multimodal")
    s = convert(str(bare), tmp_path / "out2")
    assert s["processor_files"] == ["molora_processor.json"] and not s["processor"]
    assert "no tokenizer in the source" in s["processor_note"]
