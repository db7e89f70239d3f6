"""The frozen Phi-4-mini decoder: transformers' Phi-3 architecture built from a BackboneConfig."""
from __future__ import annotations

from transformers import Phi3Config, Phi3Model

from .config import BackboneConfig


def phi3_config(b: BackboneConfig, attn_implementation: str = "sdpa") -> Phi3Config:
    rope = {"rope_type": b.rope_type, "rope_theta": b.rope_theta, "partial_rotary_factor": b.partial_rotary_factor}
    if b.rope_type == "longrope":
        rope.update(short_factor=list(b.short_factor), long_factor=list(b.long_factor),
                    factor=b.max_position_embeddings / b.original_max_position_embeddings)
    cfg = Phi3Config(
        vocab_size=b.vocab_size, hidden_size=b.hidden_size, intermediate_size=b.intermediate_size,
        num_hidden_layers=b.num_hidden_layers, num_attention_heads=b.num_attention_heads,
        num_key_value_heads=b.num_key_value_heads, hidden_act=b.hidden_act,
        max_position_embeddings=b.max_position_embeddings,
        original_max_position_embeddings=b.original_max_position_embeddings,
        rms_norm_eps=b.rms_norm_eps, tie_word_embeddings=b.tie_word_embeddings, rope_parameters=rope,
        bos_token_id=b.bos_token_id, eos_token_id=list(b.eos_token_ids), pad_token_id=b.pad_token_id,
        attention_dropout=b.attention_dropout, initializer_range=b.initializer_range, sliding_window=None,
    )
    cfg._attn_implementation = attn_implementation
    return cfg


def build_backbone(b: BackboneConfig) -> Phi3Model:
    return Phi3Model(phi3_config(b))
