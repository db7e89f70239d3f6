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
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="unknown model_type 'gpt2'"):
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
    cfg["vision"]["intermediate_size"] = 96
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


# -- official configs without adapter sections --------------------------------------------------------

def test_official_config_without_lora_sections_names_the_section(tiny_model, tmp_path):
    """An official-layout config.json must describe the LoRAs its shards hold (alpha cannot be read from
    the weights): a missing section is named, with the rank the weights show; a rank that disagrees
    with the weights names the tensor."""
    d = tmp_path / "official"
    tiny_model.save_pretrained(d, layout="phi4mm")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["molora"]
    section = cfg.pop("vision_lora")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: config\.json has no 'vision_lora' section, but the "
                       r"weights hold a vision LoRA \(rank 8 on 16 linear layers, e\.g\. 'model\.layers\.0\..*"
                       r"lora_A\.vision\.weight'\)"):
        MoLoRAModel.from_pretrained(str(d))
    cfg["vision_lora"] = {**section, "r": 4}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"the 'vision_lora' section says r 4, but tensor "
                       r"'model\.layers\.\d+\.\w+\.\w+\.lora_A\.vision\.weight' has rank 8"):
        MoLoRAModel.from_pretrained(str(d))
    cfg["vision_lora"] = section
    (d / "config.json").write_text(json.dumps(cfg))
    assert MoLoRAModel.from_pretrained(str(d)).config.adapters == tiny_model.config.adapters


# -- saving: shards, index, dtype, file modes ------------------------------------------------------------

@pytest.fixture(scope="module")
def random_tiny():
    from conftest import randomize_

    torch.manual_seed(0)
    model = MoLoRAModel(MoLoRAConfig.preset("tiny")).eval()
    randomize_(model, seed=2)
    return model


@pytest.mark.parametrize("layout", ["molora", "phi4mm", "phi4_multimodal"])
def test_sharded_save_reloads_bit_identically(random_tiny, tmp_path, layout):
    """A max_shard_size small enough to force shards: model-0000i-of-0000n.safetensors + the index, as
    huggingface_hub writes them; the reload is tensor-for-tensor identical."""
    import re

    from molora.checkpoint import INDEX

    d = tmp_path / layout
    files = random_tiny.save_pretrained(d, layout=layout, max_shard_size="400KB")
    index = json.loads((d / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all(re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", s) for s in shards)
    assert not (d / "model.safetensors").exists()
    assert set(shards) | {INDEX, "config.json"} <= set(files)
    assert sorted(p.name for p in d.glob("*.safetensors")) == shards
    on_disk = {}
    for s in shards:
        from safetensors import safe_open

        with safe_open(str(d / s), framework="pt") as fh:
            on_disk.update({k: fh.get_slice(k).get_shape() for k in fh.keys()})
    assert set(on_disk) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(
        v.numel() * v.element_size() for k, v in random_tiny.state_dict().items()
        if layout != "phi4_multimodal" or ".lora_" not in k)
    again = MoLoRAModel.from_pretrained(str(d)).state_dict()
    original = random_tiny.state_dict()
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)


def test_transformers_loads_the_sharded_native_layout(random_tiny, tmp_path):
    from transformers import Phi4MultimodalForCausalLM

    from molora.checkpoint_layouts import to_transformers_state_dict

    d = tmp_path / "native"
    random_tiny.save_pretrained(d, layout="phi4_multimodal", max_shard_size="400KB")
    ref = Phi4MultimodalForCausalLM.from_pretrained(str(d))
    theirs = ref.state_dict()
    ours = to_transformers_state_dict(random_tiny.state_dict())
    assert all(torch.equal(theirs[k], v) for k, v in ours.items())
    assert set(theirs) - set(ours) == {"lm_head.weight"}  # tied to the embedding
    assert theirs["lm_head.weight"].data_ptr() == theirs["model.embed_tokens.weight"].data_ptr()


def test_config_json_records_the_dtype(random_tiny, tmp_path):
    from transformers import Phi4MultimodalConfig

    half = MoLoRAModel(random_tiny.config).to(torch.bfloat16)
    for layout in ("molora", "phi4mm", "phi4_multimodal"):
        half.save_pretrained(tmp_path / layout, layout=layout)
        cfg = json.loads((tmp_path / layout / "config.json").read_text())
        assert cfg["torch_dtype"] == cfg["dtype"] == "bfloat16", layout
        assert MoLoRAModel.from_pretrained(str(tmp_path / layout)).dtype == torch.bfloat16
    assert Phi4MultimodalConfig.from_pretrained(str(tmp_path / "phi4_multimodal")).dtype == torch.bfloat16


def test_saved_files_are_readable_by_other_users(random_tiny, tmp_path):
    """Folders 0755 and files 0644 under the usual umask 022 (no 0700 left from the temporary folder),
    also when a save replaces an earlier one."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        d = tmp_path / "ckpt"
        for _ in range(2):
            random_tiny.save_pretrained(d, layout="phi4_multimodal", max_shard_size="400KB")
            paths = [d, *d.rglob("*")]
            assert len(paths) > 8
            for p in paths:
                mode = stat.S_IMODE(p.stat().st_mode)
                assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))
    finally:
        os.umask(old)


def test_unsafe_serialization_is_refused(random_tiny, tmp_path):
    with pytest.raises(CheckpointError, match="safetensors only"):
        random_tiny.save_pretrained(tmp_path / "x", safe_serialization=False)
    assert not (tmp_path / "x").exists()


# -- loading: eval mode, dtype, devices, memory ------------------------------------------------------------

def test_from_pretrained_returns_an_eval_model(random_tiny, tmp_path):
    """As transformers does: eval mode (LoRA dropout off), the language model's own weights frozen."""
    from conftest import randomize_

    cfg = random_tiny.config.replace(adapters={"vision": {"r": 8, "alpha": 16},
                                               "speech": {"r": 10, "alpha": 20, "dropout": 0.5}})
    d = tmp_path / "drop"
    dropping = MoLoRAModel(cfg)
    randomize_(dropping, seed=4)  # non-zero LoRA B: dropout would show
    dropping.save_pretrained(d)
    for source in (str(d), "tiny"):
        model = MoLoRAModel.from_pretrained(source)
        assert not any(m.training for m in model.modules()), source
        frozen = [n for n, p in model.language_model.named_parameters() if ".lora_" not in n]
        assert frozen and not any(p.requires_grad for n, p in model.language_model.named_parameters() if n in frozen)
    model = MoLoRAModel.from_pretrained(str(d))
    ids = torch.tensor([[256, 258, 104, 105, 262, 259]])
    feats = torch.randn(1, 9, 80)
    with torch.no_grad():
        a = model(input_ids=ids, audio_input_features=feats, audio_embed_sizes=torch.tensor([1])).logits
        b = model(input_ids=ids, audio_input_features=feats, audio_embed_sizes=torch.tensor([1])).logits
    assert torch.equal(a, b)  # no dropout at inference
    model.train()
    with torch.no_grad():
        c = model(input_ids=ids, audio_input_features=feats, audio_embed_sizes=torch.tensor([1])).logits
    assert not torch.equal(a, c)  # (which train mode would apply)


@pytest.fixture(scope="module")
def bf16_ckpt(random_tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("bf16") / "ckpt"
    MoLoRAModel(random_tiny.config).to(torch.bfloat16).save_pretrained(d)
    return d


def test_dtype_and_device_arguments_under_transformers_names(bf16_ckpt):
    assert MoLoRAModel.from_pretrained(str(bf16_ckpt)).dtype == torch.bfloat16  # "auto": as stored
    assert MoLoRAModel.from_pretrained(str(bf16_ckpt), dtype="auto").dtype == torch.bfloat16
    for kwargs in ({"dtype": torch.float32}, {"dtype": "float32"}, {"torch_dtype": torch.float32},
                   {"torch_dtype": "float32", "dtype": "float32"}):
        model = MoLoRAModel.from_pretrained(str(bf16_ckpt), **kwargs)
        assert {p.dtype for p in model.parameters()} == {torch.float32}, kwargs
    with pytest.raises(CheckpointError, match="disagree"):
        MoLoRAModel.from_pretrained(str(bf16_ckpt), dtype="float32", torch_dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match="unknown dtype 'int8'"):
        MoLoRAModel.from_pretrained(str(bf16_ckpt), dtype="int8")
    assert MoLoRAModel.from_pretrained(str(bf16_ckpt), device_map="cpu").device == torch.device("cpu")
    if not torch.cuda.is_available():
        assert MoLoRAModel.from_pretrained(str(bf16_ckpt), device_map="auto").device == torch.device("cpu")
    with pytest.raises(CheckpointError, match="unknown device"):
        MoLoRAModel.from_pretrained(str(bf16_ckpt), device_map="gpu7")


def test_a_request_memory_cannot_hold_is_an_error(bf16_ckpt, monkeypatch):
    """An up-cast that does not fit is refused before anything is allocated; the stored dtype, which
    stays memory-mapped, still loads."""
    from molora import placement

    need = sum(p.numel() for p in MoLoRAModel.from_pretrained(str(bf16_ckpt)).parameters()) * 4
    monkeypatch.setattr(placement, "available_bytes", lambda device: need // 2)
    with pytest.raises(CheckpointError, match=r"loading needs 0\.\d GiB more on cpu but 0\.\d GiB is available"):
        MoLoRAModel.from_pretrained(str(bf16_ckpt), dtype="float32")
    assert MoLoRAModel.from_pretrained(str(bf16_ckpt)).dtype == torch.bfloat16
    monkeypatch.setattr(placement, "available_bytes", lambda device: 1 << 40)
    assert MoLoRAModel.from_pretrained(str(bf16_ckpt), dtype="float32").dtype == torch.float32


def test_auto_device_map_places_whole_parts(random_tiny):
    """device_map="auto" (accelerate) over several devices keeps the decoder in one piece (one routing
    state per forward) and spreads the towers; a model that fits nowhere is an error."""
    from molora import placement

    total = sum(p.numel() * 4 for p in random_tiny.parameters())
    lm = sum(p.numel() * 4 for p in random_tiny.language_model.parameters())
    device_map = placement.auto_device_map(random_tiny, torch.float32,
                                           max_memory={0: int(lm * 1.3), 1: int(lm * 1.3), "cpu": 10 * total})
    assert not any(k.startswith("language_model.") for k in device_map)
    assert "language_model" in device_map and len(set(device_map.values())) > 1
    with pytest.raises(CheckpointError, match="does not fit in memory"):
        placement.place(random_tiny, torch.float32, device_map={"language_model": "disk", "image_embed": "cpu"})
