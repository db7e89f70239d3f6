"""Which files a checkpoint's weights come from (the index or model.safetensors, never a backup beside
them), and bad checkpoint files: each is one CheckpointError naming the file, the field and the reason."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import random_tiny
from molora import MoLoRAModel
from molora.checkpoint import INDEX, stored_dtype
from molora.errors import CheckpointError


@pytest.fixture(scope="module")
def model():
    return random_tiny(seed=1)


def _other(model) -> dict:
    """The same keys as ``model`` with other values (an older save)."""
    return {k: (v + 1.0 if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _save(model, tmp_path, layout="molora", name=None, **kw):
    d = tmp_path / (name or layout)
    model.save_pretrained(d, layout=layout, **kw)
    return d


# -- weights come only from the index or model.safetensors -------------------------------------------------

def test_a_backup_beside_model_safetensors_is_not_read(model, tmp_path):
    d = _save(model, tmp_path)
    save_file(_other(model), str(d / "model_backup.safetensors"))  # sorts after model.safetensors
    assert _same(MoLoRAModel.from_pretrained(str(d)).state_dict(), model.state_dict())


def test_stored_dtype_reads_model_safetensors_only(model, tmp_path):
    d = _save(model, tmp_path)
    save_file({k: v.to(torch.bfloat16) for k, v in _other(model).items()}, str(d / "a_backup.safetensors"))
    assert stored_dtype(d) == torch.float32


def test_weight_shapes_read_model_safetensors_only(model, tmp_path):
    """An official-layout folder without molora's section takes its adapters from the weights' headers:
    a stray file with another adapter's tensor is not one of them."""
    d = _save(model, tmp_path, "phi4mm")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["molora"]
    (d / "config.json").write_text(json.dumps(cfg))
    save_file({"model.layers.0.self_attn.qkv_proj.lora_A.music.weight": torch.zeros(4, 128)},
              str(d / "old-export.safetensors"))
    assert _same(MoLoRAModel.from_pretrained(str(d)).state_dict(), model.state_dict())


def test_peft_folder_reads_adapter_model_safetensors_only(model, tmp_path):
    d = _save(model, tmp_path, "phi4_multimodal")
    stale = {k: v + 1.0 for k, v in load_file(str(d / "vision-lora" / "adapter_model.safetensors")).items()}
    save_file(stale, str(d / "vision-lora" / "adapter_model_old.safetensors"))
    assert _same(MoLoRAModel.from_pretrained(str(d)).state_dict(), model.state_dict())


def test_an_index_reads_its_own_files(model, tmp_path):
    d = _save(model, tmp_path, max_shard_size="400KB")
    save_file(_other(model), str(d / "model.safetensors"))  # not named by the index
    assert _same(MoLoRAModel.from_pretrained(str(d)).state_dict(), model.state_dict())


def test_only_other_safetensors_names_them(model, tmp_path):
    d = _save(model, tmp_path)
    (d / "model.safetensors").rename(d / "model_backup.safetensors")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or model\.safetensors\.index\.json "
                                              r"\(model_backup\.safetensors is not read"):
        MoLoRAModel.from_pretrained(str(d))


# -- bad index files ---------------------------------------------------------------------------------------

def _sharded(model, tmp_path):
    return _save(model, tmp_path, name="sharded", max_shard_size="400KB")


@pytest.mark.parametrize("text, reason", [
    ("{not json", r"not valid JSON"),
    ('{"metadata": {}}', r"has no 'weight_map'"),
    ("[1, 2]", r"has no 'weight_map'"),
    ('{"weight_map": {"x": 3}}', r"weight_map\['x'\] is 3, not the name of a \.safetensors file"),
    ('{"weight_map": {"x": "../elsewhere.safetensors"}}', r"weight_map\['x'\] is '\.\./elsewhere\.safetensors', not the name of a \.safetensors file in this folder"),
])
def test_a_bad_index_is_named(model, tmp_path, text, reason):
    d = _sharded(model, tmp_path)
    (d / INDEX).write_text(text)
    with pytest.raises(CheckpointError, match=rf"{INDEX}: {reason}"):
        MoLoRAModel.from_pretrained(str(d))


def test_an_index_naming_a_missing_file_names_both(model, tmp_path):
    d = _sharded(model, tmp_path)
    shard = json.loads((d / INDEX).read_text())["weight_map"]["language_model.embed_tokens.weight"]
    (d / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"{INDEX}: names {shard}, which is missing"):
        MoLoRAModel.from_pretrained(str(d))


def test_an_index_naming_a_tensor_its_file_lacks(model, tmp_path):
    d = _sharded(model, tmp_path)
    index = json.loads((d / INDEX).read_text())
    index["weight_map"]["language_model.ghost.weight"] = index["weight_map"]["language_model.embed_tokens.weight"]
    (d / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"{INDEX}: names tensor 'language_model.ghost.weight' in "
                                              r"model-\d+-of-\d+\.safetensors, which does not hold it"):
        MoLoRAModel.from_pretrained(str(d))


# -- bad config.json, in each layout -----------------------------------------------------------------------

def test_config_json_that_is_not_an_object(model, tmp_path):
    d = _save(model, tmp_path)
    (d / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match=r"config\.json: holds a JSON list, not an object"):
        MoLoRAModel.from_pretrained(str(d))


def _edit(d, change):
    cfg = json.loads((d / "config.json").read_text())
    change(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def _official(cfg):  # an official config.json as Microsoft ships it: no molora section
    del cfg["molora"]


BAD_FIELDS = [  # layout, change, the field named, the reason
    ("molora", lambda c: c["backbone"].update(hidden_size="128"), "backbone.hidden_size",
     r"must be an integer, got '128' \(str\)"),
    ("molora", lambda c: c["vision"].update(layer_norm_eps="tiny"), "vision.layer_norm_eps",
     "must be a number, got 'tiny'"),
    ("molora", lambda c: c["adapters"]["vision"].update(r=[8]), "adapters.vision.r", "must be an integer"),
    ("molora", lambda c: c.update(backbone=[1]), "backbone", "must be an object"),
    ("phi4mm", lambda c: c["molora"]["backbone"].update(hidden_size="128"), "molora.backbone.hidden_size",
     "must be an integer"),
    ("phi4mm", lambda c: (_official(c), c.update(hidden_size="128")), "hidden_size", "must be an integer"),
    ("phi4mm", lambda c: (_official(c), c.update(vocab_size=True)), "vocab_size", "must be an integer, got True"),
    ("phi4mm", lambda c: (_official(c), c["vision_lora"].update(r="eight")), "vision_lora.r", "must be an integer"),
    ("phi4mm", lambda c: (_official(c), c["audio_processor"]["config"].update(attention_dim="64")),
     "audio_processor.config.attention_dim", "must be an integer"),
    ("phi4mm", lambda c: (_official(c), c.update(embd_layer=5)), "embd_layer", "must be an object"),
    ("phi4_multimodal", lambda c: c.update(hidden_size="128"), "hidden_size", "must be an integer"),
    ("phi4_multimodal", lambda c: c.pop("num_hidden_layers"), "num_hidden_layers", "is missing"),
    ("phi4_multimodal", lambda c: c["vision_config"].update(num_hidden_layers=2.5),
     "vision_config.num_hidden_layers", "must be an integer, got 2.5"),
    ("phi4_multimodal", lambda c: c["rope_parameters"].update(short_factor="ones"), "rope_parameters.short_factor",
     "must be a list"),
    ("phi4_multimodal", lambda c: c.update(eos_token_id="end"), "eos_token_id", "must be an integer or a list"),
]


@pytest.mark.parametrize("layout, change, field, reason", BAD_FIELDS)
def test_a_config_field_of_the_wrong_type_is_named(model, tmp_path, layout, change, field, reason):
    d = _save(model, tmp_path, layout)
    _edit(d, change)
    with pytest.raises(CheckpointError, match=rf"config\.json: {field}: {reason}"):
        MoLoRAModel.from_pretrained(str(d))


@pytest.mark.parametrize("layout, field", [("molora", "backbone.hidden_size"), ("phi4mm", "hidden_size"),
                                           ("phi4_multimodal", "hidden_size")])
def test_a_hidden_size_the_weights_contradict_is_named(model, tmp_path, layout, field):
    """Not blamed on short_factor (the rotary factors follow from hidden_size)."""
    d = _save(model, tmp_path, layout)
    _edit(d, (lambda c: c["backbone"].update(hidden_size=256)) if layout == "molora" else
          (lambda c: (_official(c) if layout == "phi4mm" else None, c.update(hidden_size=256))))
    with pytest.raises(CheckpointError, match=rf"config\.json: {field}: is 256 but the weights have 128 "
                                              r"\(model\.embed_tokens\.weight has shape \[1024, 128\]\)"
                       .replace("model\\.", "language_model\\." if layout == "molora" else "model\\.")):
        MoLoRAModel.from_pretrained(str(d))


def test_a_rotary_mismatch_names_the_fields_it_follows_from(model, tmp_path):
    d = _save(model, tmp_path)
    _edit(d, lambda c: c["backbone"].update(partial_rotary_factor=0.5))
    with pytest.raises(CheckpointError, match=r"backbone: short_factor has 12 entries but hidden_size 128 / "
                                              r"num_attention_heads 4 x partial_rotary_factor 0\.5 gives 16 rotary "
                                              r"dims, so 8 are needed"):
        MoLoRAModel.from_pretrained(str(d))


# -- bad safetensors files ----------------------------------------------------------------------------------

def _bad_dtype(path):
    """The file with its first tensor's dtype string replaced by one safetensors does not know."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["dtype"] = "F99"
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


@pytest.mark.parametrize("layout", ["molora", "phi4mm"])
@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "incomplete metadata"),
    (lambda p: p.write_bytes(b"not a safetensors file"), "header"),
    (_bad_dtype, "unknown variant `F99`"),
])
def test_a_damaged_weights_file_is_named(model, tmp_path, layout, damage, reason):
    d = _save(model, tmp_path, layout)
    if layout == "phi4mm":
        _edit(d, _official)  # its adapters are read from the headers first
    damage(d / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: unreadable safetensors file \(.*{reason}"):
        MoLoRAModel.from_pretrained(str(d))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors file"):
        stored_dtype(d)


def test_the_full_size_check_compares_what_the_loader_reads(model, tmp_path):
    """scripts/validate_full_size.py's convert step compares the source's tensors (those the index or
    model.safetensors holds, not a backup beside them) with their converted copies."""
    import importlib.util
    from pathlib import Path

    from molora import MoLoRAProcessor
    from molora.checkpoint_layouts import to_phi4mm_key

    path = Path(__file__).resolve().parents[1] / "scripts" / "validate_full_size.py"
    spec = importlib.util.spec_from_file_location("validate_full_size", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    d = _save(model, tmp_path, "phi4mm")
    MoLoRAProcessor.from_config(model.config).save_pretrained(d)
    save_file({to_phi4mm_key(k): v for k, v in _other(model).items()}, str(d / "model_backup.safetensors"))
    out = script.step_convert(d, tmp_path / "native")
    assert out["bit_exact"] and out["tensors_compared"] == len(model.state_dict())
