"""Checkpoint I/O edge cases: layouts told apart by config.json, clear errors for what cannot be
read, atomic writes, processor files, hub ids offline, and LongRoPE past the original context."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import make_reference_checkpoint, reference_logits
from molora import MoLoRAConfig, MoLoRAModel, MoLoRAProcessor
from molora.checkpoint import detect_layout, load_config
from molora.errors import CheckpointError


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return MoLoRAModel(MoLoRAConfig.preset("tiny")).eval()


def test_layouts_are_told_apart(tiny_model, tmp_path):
    for layout in ("molora", "phi4mm", "phi4_multimodal"):
        tiny_model.save_pretrained(tmp_path / layout, layout=layout)
        assert detect_layout(tmp_path / layout) == layout
        assert (tmp_path / layout / "vision-lora" / "adapter_config.json").exists()
        assert (tmp_path / layout / "speech-lora" / "adapter_model.safetensors").exists()
        cfg = load_config(tmp_path / layout)
        assert cfg.adapters == tiny_model.config.adapters
        assert cfg.backbone == tiny_model.config.backbone


def test_unreadable_checkpoints_give_clear_errors(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        MoLoRAModel.from_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="missing config.json"):
        MoLoRAModel.from_pretrained(str(tmp_path / "empty"))
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="unknown model_type 'llama'"):
        MoLoRAModel.from_pretrained(str(d))
    # a pickle checkpoint is never read
    d = tmp_path / "pickled"
    tiny_model.save_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only"):
        MoLoRAModel.from_pretrained(str(d))
    # weights of another shape
    d = tmp_path / "shapes"
    tiny_model.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["backbone"]["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        MoLoRAModel.from_pretrained(str(d))
    # a key missing
    d = tmp_path / "missing"
    tiny_model.save_pretrained(d)
    sd = {k: v.contiguous() for k, v in tiny_model.state_dict().items() if "norm" not in k}
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing"):
        MoLoRAModel.from_pretrained(str(d))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="download the repository"):
        MoLoRAModel.from_pretrained("microsoft/Phi-4-multimodal-instruct")


def test_save_is_atomic(tiny_model, tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint whole and no temporary folders."""
    d = tmp_path / "ckpt"
    tiny_model.save_pretrained(d)
    before = (d / "model.safetensors").read_bytes()
    import molora.checkpoint as ck

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck, "export_peft", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny_model.save_pretrained(d)
    assert (d / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_processor_round_trip(tmp_path):
    proc = MoLoRAProcessor.from_config(MoLoRAConfig.preset("tiny"))
    proc.save_pretrained(tmp_path / "p")
    again = MoLoRAProcessor.from_pretrained(str(tmp_path / "p"))
    msgs = [{"role": "user", "content": "héllo <|end|> wörld"}]
    assert torch.equal(proc(msgs)["input_ids"], again(msgs)["input_ids"])
    assert again.config.to_dict() == proc.config.to_dict()


def test_long_rope_past_the_original_context(tmp_path):
    """Sequences longer than original_max_position_embeddings switch to the long factors, as in
    transformers (tiny context so the switch happens at 24 tokens)."""
    cfg = MoLoRAConfig.preset("tiny").replace(backbone={"original_max_position_embeddings": 24,
                                                        "max_position_embeddings": 96})
    d = tmp_path / "ref"
    d.mkdir()
    ref = make_reference_checkpoint(d, cfg, seed=5)
    model = MoLoRAModel.from_pretrained(str(d)).eval()
    for n in (20, 40):
        ids = torch.randint(0, 255, (1, n))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            got = model(**batch).logits
        assert (got - reference_logits(ref, batch, None)).abs().max().item() <= 1e-4


def test_official_layout_without_molora_section(tiny_model, tmp_path):
    """An official-format config.json does not describe the vision tower: its shapes come from an
    `img_processor` section when present, else from the weights."""
    d = tmp_path / "official"
    tiny_model.save_pretrained(d, layout="phi4mm")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["molora"]
    (d / "config.json").write_text(json.dumps(cfg))
    again = MoLoRAModel.from_pretrained(str(d)).eval()
    v, w = again.config.vision, tiny_model.config.vision
    assert (v.hidden_size, v.num_hidden_layers, v.intermediate_size, v.image_size, v.patch_size) == \
        (w.hidden_size, w.num_hidden_layers, w.intermediate_size, w.image_size, w.patch_size)
    cfg["img_processor"] = {"hidden_size": w.hidden_size, "num_attention_heads": w.num_attention_heads,
                            "num_hidden_layers": w.num_hidden_layers, "intermediate_size": w.intermediate_size,
                            "image_size": w.image_size, "patch_size": w.patch_size}
    (d / "config.json").write_text(json.dumps(cfg))
    again = MoLoRAModel.from_pretrained(str(d)).eval()
    ids = torch.tensor([[256, 258, 104, 105, 260, 259]])
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, tiny_model(input_ids=ids).logits)
    assert again.config.adapters.keys() == tiny_model.config.adapters.keys()
