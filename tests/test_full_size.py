"""The phi4-multimodal preset built on the meta device matches the published shapes: name for
name against transformers' Phi4MultimodalForCausalLM (real config values) and the official
phi4mm key format, with the published adapter sizes."""
from __future__ import annotations

import re

import pytest
import torch

from molora import MoLoRAConfig, MoLoRAModel
from molora.checkpoint_layouts import to_phi4mm_key, to_transformers_config, to_transformers_state_dict


@pytest.fixture(scope="module")
def full():
    cfg = MoLoRAConfig.preset("phi4-multimodal")
    with torch.device("meta"):
        model = MoLoRAModel(cfg)
    return cfg, model, {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_adapter_parameter_counts(full, capsys):
    _, model, _ = full
    counts = model.parameter_counts()
    with capsys.disabled():
        print("\nphi4-multimodal parameter counts:", {k: f"{v / 1e6:.1f}M" for k, v in sorted(counts.items())})
    assert round(counts["lora[vision]"] / 1e6, 1) == 369.1
    assert round(counts["lora[speech]"] / 1e6, 1) == 461.4
    assert round(counts["language_model"] / 1e9, 3) == 3.836  # Phi-4-mini, tied embeddings, LoRAs excluded
    assert round(counts["image_embed"] / 1e6, 1) == 441.6  # SigLIP-so400m/14 (incl. unused pooling head) + projector
    assert round(counts["audio_embed"] / 1e6, 1) == 466.4  # conformer + two audio projectors
    assert round(sum(counts.values()) / 1e9, 2) == 5.57  # the published "5.6B" Phi-4-multimodal


def test_names_and_shapes_match_transformers(full):
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    cfg, _, shapes = full
    hf_cfg = Phi4MultimodalConfig(**{k: v for k, v in to_transformers_config(cfg).items()
                                     if k not in ("model_type", "architectures")})
    with torch.device("meta"):
        ref = Phi4MultimodalForCausalLM(hf_cfg)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    ours = {k: tuple(v.shape) for k, v in to_transformers_state_dict(
        {k: torch.empty(s, device="meta") for k, s in shapes.items()}).items()}
    assert set(ours) == set(ref_shapes), (sorted(set(ours) - set(ref_shapes))[:5], sorted(set(ref_shapes) - set(ours))[:5])
    assert ours == ref_shapes


def test_official_phi4mm_keys(full):
    _, _, shapes = full
    official = {to_phi4mm_key(k): s for k, s in shapes.items()}
    assert official["model.embed_tokens.weight"] == (200064, 3072)
    assert "lm_head.weight" not in official  # tied
    assert official["model.layers.31.self_attn.qkv_proj.base_layer.weight"] == (5120, 3072)
    assert official["model.layers.0.self_attn.qkv_proj.lora_A.vision.weight"] == (256, 3072)
    assert official["model.layers.0.self_attn.qkv_proj.lora_B.vision.weight"] == (5120, 256)
    assert official["model.layers.0.mlp.gate_up_proj.lora_A.speech.weight"] == (320, 3072)
    assert official["model.layers.0.mlp.down_proj.lora_B.speech.weight"] == (3072, 320)
    assert official["model.layers.0.mlp.gate_up_proj.base_layer.weight"] == (16384, 3072)
    ie, ae = "model.embed_tokens_extend.image_embed.", "model.embed_tokens_extend.audio_embed."
    assert official[ie + "img_processor.embeddings.patch_embedding.weight"] == (1152, 3, 14, 14)
    assert official[ie + "img_processor.embeddings.position_embedding.weight"] == (1024, 1152)
    assert official[ie + "img_processor.encoder.layers.26.mlp.fc1.weight"] == (4304, 1152)
    assert official[ie + "glb_GN"] == (1, 1, 1152)
    assert official[ie + "sub_GN"] == (1, 1, 1, 1152)
    assert official[ie + "img_projection.0.weight"] == (3072, 1152)
    assert official[ie + "img_projection.2.weight"] == (3072, 3072)
    assert official[ae + "encoder.encoders.23.self_attn.linear_q.weight"] == (1024, 1024)
    assert official[ae + "encoder.encoders.0.feed_forward_in.net.0.linear.weight"] == (3072, 1024)
    assert official[ae + "encoder.relative_attention_bias_layer.bias_values.weight"] == (1000, 16)
    assert official[ae + "encoder.encoder_embedding.global_mean"] == (80,)
    for p in ("speech", "vision"):
        assert official[f"{ae}audio_projection.{p}.0.weight"] == (3072, 1024)
        assert official[f"{ae}audio_projection.{p}.2.weight"] == (3072, 3072)
    layers = {int(m.group(1)) for k in official if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    assert layers == set(range(32))
    blocks = {int(m.group(1)) for k in official if (m := re.match(re.escape(ae) + r"encoder\.encoders\.(\d+)\.", k))}
    assert blocks == set(range(24))
    # every decoder linear carries both adapters
    assert sum(1 for k in official if k.endswith("lora_A.vision.weight")) == 32 * 4
    assert sum(1 for k in official if k.endswith("lora_A.speech.weight")) == 32 * 4


def _decoder_count(b) -> int:
    """Parameters of a Phi-3-architecture decoder, from its shapes (no LoRA)."""
    d, kv = b.hidden_size, b.num_key_value_heads * b.head_dim
    layer = d * (d + 2 * kv) + d * d + d * 2 * b.intermediate_size + b.intermediate_size * d + 2 * d
    return b.num_hidden_layers * layer + b.vocab_size * d * (1 if b.tie_word_embeddings else 2) + d


def _lora_count(b, r) -> int:
    d, kv, f = b.hidden_size, b.num_key_value_heads * b.head_dim, b.intermediate_size
    per_layer = r * ((d + d + 2 * kv) + (d + d) + (d + 2 * f) + (f + d))
    return b.num_hidden_layers * per_layer


@pytest.mark.parametrize("name", ["phi4-mini-reasoning-multimodal", "phi4-14b-multimodal"])
def test_seed_family_presets_on_the_meta_device(name, capsys):
    """The other seed backbones with the same encoders and routed LoRAs: counts from the shapes,
    and the decoder's count equal to transformers' Phi3ForCausalLM of the same config."""
    from transformers import Phi3ForCausalLM

    from molora.backbones.phi3 import hf_config

    cfg = MoLoRAConfig.preset(name)
    b = cfg.backbone
    with torch.device("meta"):
        model = MoLoRAModel(cfg)
        ref = Phi3ForCausalLM(hf_config(b))
    counts = model.parameter_counts()
    with capsys.disabled():
        print(f"\n{name} parameter counts:", {k: f"{v / 1e6:.1f}M" for k, v in sorted(counts.items())},
              f"total {sum(counts.values()) / 1e9:.2f}B")
    decoder = counts["language_model"] + counts.get("lm_head", 0)
    assert decoder == _decoder_count(b) == sum(p.numel() for p in ref.parameters())
    assert counts["lora[vision]"] == _lora_count(b, 256) and counts["lora[speech]"] == _lora_count(b, 320)
    if name == "phi4-14b-multimodal":
        assert round(decoder / 1e9, 2) == 14.66  # Phi-4: "14.7B"
        assert (b.vocab_size, b.num_hidden_layers, b.partial_rotary_factor, b.tie_word_embeddings) == \
            (100352, 40, 1.0, False)
        assert model.lm_head.weight.shape == (100352, 5120)
        assert model.image_embed.img_projection[0].weight.shape == (5120, 1152)  # projectors at the new width
        assert round(counts["lora[vision]"] / 1e6, 1) == 891.3 and round(counts["lora[speech]"] / 1e6, 1) == 1114.1
    else:  # Phi-4-mini's shapes exactly
        with torch.device("meta"):
            mini = MoLoRAModel(MoLoRAConfig.preset("phi4-multimodal")).parameter_counts()
        assert counts == mini and b.pretrained == "microsoft/Phi-4-mini-reasoning"
