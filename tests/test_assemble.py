"""Assembling a new model from parts: a backbone checkpoint saved by transformers (Phi3ForCausalLM) in
each shape family of the seed models -- Phi-4-mini / Phi-4-mini-reasoning (partial LongRoPE, tied
embeddings) and Phi-4 14B (rotary on the whole head, plain RoPE, untied embeddings) -- and an
open_clip SigLIP checkpoint for the vision tower."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import randomize_
from molora import MoLoRAConfig
from molora.assemble import assemble
from molora.backbones.phi3 import hf_config as phi3_config
from molora.errors import CheckpointError


@pytest.fixture(scope="module")
def phi4_mini_dir(tmp_path_factory):
    from transformers import Phi3ForCausalLM

    cfg = MoLoRAConfig.preset("tiny")
    d = tmp_path_factory.mktemp("phi4mini")
    torch.manual_seed(0)
    ref = Phi3ForCausalLM(phi3_config(cfg.backbone, attn_implementation="eager")).eval()
    randomize_(ref, seed=3)
    ref.save_pretrained(d)
    return d, ref


def test_backbone_from_phi4_mini_checkpoint(phi4_mini_dir):
    d, ref = phi4_mini_dir
    cfg = MoLoRAConfig.preset("tiny")
    model = assemble(cfg, backbone=str(d)).eval()
    assert json.loads((d / "config.json").read_text())["model_type"] == "phi3"
    ids = torch.tensor([[256, 258, 104, 105, 260, 259, 72, 101]])
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert (got - expected).abs().max().item() <= 1e-4
    # fresh adapters start as no-ops (peft init), and only they (and encoders/projectors) train
    assert all(not p.requires_grad for n, p in model.language_model.named_parameters() if ".lora_" not in n)


def test_backbone_shape_mismatch_is_a_clear_error(phi4_mini_dir):
    d, _ = phi4_mini_dir
    cfg = MoLoRAConfig.preset("tiny")
    bad = json.loads((d / "config.json").read_text())
    bad["model_type"] = "gpt2"  # no backbone family's
    d2 = d.parent / "gpt2"
    d2.mkdir(exist_ok=True)
    (d2 / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"expected a backbone checkpoint \(model_type one of .*'llama'.*\), "
                                              "got model_type 'gpt2'"):
        assemble(cfg, backbone=str(d2))


def test_vision_tower_from_open_clip_checkpoint(tmp_path):
    """An open_clip SigLIP checkpoint (timm trunk) trained at a lower resolution: weights land in
    the tower, the position grid is resized to the crop size."""
    import timm

    cfg = MoLoRAConfig.preset("tiny")
    v = cfg.vision
    trunk = timm.models.vision_transformer.VisionTransformer(
        img_size=42, patch_size=v.patch_size, embed_dim=v.hidden_size, depth=v.num_hidden_layers,
        num_heads=v.num_attention_heads, mlp_ratio=v.intermediate_size / v.hidden_size, class_token=False,
        global_pool="map", num_classes=0, act_layer="gelu_tanh")
    randomize_(trunk, seed=4)
    path = tmp_path / "open_clip_siglip.safetensors"
    save_file({f"visual.trunk.{k}": t.contiguous() for k, t in trunk.state_dict().items()}, str(path))
    model = assemble(cfg, vision=str(path))
    tower = model.image_embed.img_processor
    assert torch.equal(tower.embeddings.patch_embedding.weight, trunk.patch_embed.proj.weight)
    assert tower.embeddings.position_embedding.weight.shape[0] == (v.image_size // v.patch_size) ** 2
    q, k, _ = trunk.blocks[0].attn.qkv.weight.chunk(3)
    assert torch.equal(tower.encoder.layers[0].self_attn.q_proj.weight, q)
    assert torch.equal(tower.encoder.layers[0].self_attn.k_proj.weight, k)


# tiny stand-ins of each backbone shape family (the presets' decoders at a few layers of width 128)
FAMILY_SHAPES = {
    "phi4-mini": {},  # the tiny preset's own decoder: partial rotary 0.75, LongRoPE, tied
    "phi4-14b": {"partial_rotary_factor": 1.0, "rope_type": "default", "short_factor": None, "long_factor": None,
                 "rope_theta": 250000.0, "tie_word_embeddings": False, "num_key_value_heads": 1,
                 "original_max_position_embeddings": 512, "max_position_embeddings": 512},
}


@pytest.mark.parametrize("family", list(FAMILY_SHAPES))
def test_each_backbone_shape_family_assembles_with_transformers_logits_and_trains(family, tmp_path):
    from transformers import Phi3ForCausalLM

    from datafactory import corpus
    from molora.stages.recipe import load_recipe
    from molora.stages.trainer import train

    base = MoLoRAConfig.preset("tiny")
    cfg = base.replace(backbone=FAMILY_SHAPES[family])
    d = tmp_path / family
    torch.manual_seed(1)
    ref = Phi3ForCausalLM(phi3_config(cfg.backbone, attn_implementation="eager")).eval()
    randomize_(ref, seed=5)
    ref.save_pretrained(d)
    saved = json.loads((d / "config.json").read_text())
    assert saved["tie_word_embeddings"] == cfg.backbone.tie_word_embeddings
    model = assemble(base, backbone=str(d)).eval()
    b = model.config.backbone
    assert (b.partial_rotary_factor, b.rope_type, b.tie_word_embeddings) == \
        (cfg.backbone.partial_rotary_factor, cfg.backbone.rope_type, cfg.backbone.tie_word_embeddings)
    assert (model.lm_head is None) == cfg.backbone.tie_word_embeddings
    ids = torch.randint(0, 255, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert (got - expected).abs().max().item() <= 1e-4 * max(1.0, expected.abs().max().item())
    # and one stage trains on top of it
    data = corpus(tmp_path / "data", "asr")
    recipe = load_recipe("tiny-speech", {"data.train": str(data), "max_steps": 3, "model": {"preset": "tiny",
                                                                                           "backbone": str(d)}})
    summary = train(recipe, tmp_path / "run", progress=False)
    assert summary["steps"] == 3 and summary["skipped"] == []
