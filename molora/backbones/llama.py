"""Llama-shaped families: one linear per projection (``q_proj`` / ``k_proj`` / ``v_proj``,
``gate_proj`` / ``up_proj``), gated MLP, RMSNorm, rotary embedding on the whole head.

``llama``: transformers' Llama architecture without biases. ``qwen2``: the same with biases on
q / k / v (transformers' Qwen2 architecture, attending to the whole context).
"""
from __future__ import annotations

from transformers import LlamaConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_rotary
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb as qwen2_rotary

from ..config import BackboneConfig
from .family import BackboneFamily, refuse_unless


def _common(b: BackboneConfig) -> dict:
    return dict(
        vocab_size=b.vocab_size, hidden_size=b.hidden_size, intermediate_size=b.intermediate_size,
        num_hidden_layers=b.num_hidden_layers, num_attention_heads=b.num_attention_heads,
        num_key_value_heads=b.num_key_value_heads, head_dim=b.head_dim, hidden_act=b.hidden_act,
        max_position_embeddings=b.max_position_embeddings, rms_norm_eps=b.rms_norm_eps,
        tie_word_embeddings=b.tie_word_embeddings, rope_parameters={"rope_type": "default", "rope_theta": b.rope_theta},
        bos_token_id=b.bos_token_id, eos_token_id=list(b.eos_token_ids), pad_token_id=b.pad_token_id,
        attention_dropout=b.attention_dropout, initializer_range=b.initializer_range,
    )


def llama_config(b: BackboneConfig, attn_implementation: str = "sdpa") -> LlamaConfig:
    cfg = LlamaConfig(**_common(b), attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = attn_implementation
    return cfg


def qwen2_config(b: BackboneConfig, attn_implementation: str = "sdpa") -> Qwen2Config:
    cfg = Qwen2Config(**_common(b), use_sliding_window=False)
    cfg._attn_implementation = attn_implementation
    return cfg


def check(b: BackboneConfig) -> None:
    refuse_unless(b.rope_type == "default", f"a {b.family} decoder's rotary embedding is plain (rope_type "
                  f"'default'), got {b.rope_type!r}")
    refuse_unless(b.partial_rotary_factor == 1.0, f"a {b.family} decoder rotates the whole head "
                  f"(partial_rotary_factor 1.0), got {b.partial_rotary_factor}")


def _reader(name: str):
    def read_config(d: dict, base: BackboneConfig) -> BackboneConfig:
        """A flat ``config.json`` of the family: what molora's decoder cannot compute alike is refused."""
        from ..checkpoint_layouts import _backbone_from_flat, check_flat_config

        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        refuse_unless(kind == "default", f"rope type {kind!r} is not supported for {name} (plain rotary only)",
                      "rope_parameters")
        heads = d.get("num_attention_heads") or 1
        refuse_unless(d.get("head_dim") in (None, d.get("hidden_size", 0) // heads),
                      f"is {d.get('head_dim')}, not hidden_size / num_attention_heads", "head_dim")
        for key in ("attention_bias", "mlp_bias"):
            refuse_unless(not d.get(key), "biases molora's llama decoder does not have (use qwen2 for q/k/v "
                          "biases)", key)
        if name == "qwen2" and not d.get("use_sliding_window"):
            d = {**d, "sliding_window": None}  # the window is unused: every layer attends to the whole context
        b = _backbone_from_flat(check_flat_config(d), base)
        b.family, b.rope_type, b.short_factor, b.long_factor = name, "default", None, None
        return b

    return read_config


LLAMA = BackboneFamily(
    name="llama", model_types=("llama",), attention_in=("q_proj", "k_proj", "v_proj"),
    mlp_in=("gate_proj", "up_proj"), model_class=LlamaModel, apply_rotary=llama_rotary, hf_config=llama_config,
    read_config=_reader("llama"), check=check,
)
QWEN2 = BackboneFamily(
    name="qwen2", model_types=("qwen2",), attention_in=("q_proj", "k_proj", "v_proj"),
    mlp_in=("gate_proj", "up_proj"), model_class=Qwen2Model, apply_rotary=qwen2_rotary, hf_config=qwen2_config,
    read_config=_reader("qwen2"), check=check,
)
