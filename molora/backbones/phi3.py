"""The Phi-3 architecture family (Phi-4-mini, Phi-4-mini-reasoning, Phi-4 14B): fused ``qkv_proj`` /
``gate_up_proj``, SiLU-gated MLP, RMSNorm, rotary embedding on all or part of each head (LongRoPE
or plain), tied or untied output embedding."""
from __future__ import annotations

from transformers import Phi3Config
from transformers.models.phi3.modeling_phi3 import Phi3Model, apply_rotary_pos_emb

from ..config import BackboneConfig
from .family import BackboneFamily, refuse_unless


def hf_config(b: BackboneConfig, attn_implementation: str = "sdpa") -> Phi3Config:
    """transformers' ``Phi3Config`` with the decoder's real values."""
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


def read_config(d: dict, base: BackboneConfig) -> BackboneConfig:
    from ..checkpoint_layouts import _backbone_from_flat

    return _backbone_from_flat(d, base)


def check(b: BackboneConfig) -> None:
    # the fused gate runs silu (molora/swiglu.py)
    refuse_unless(b.hidden_act == "silu", f"the phi3 family's MLP is SiLU-gated, got hidden_act {b.hidden_act!r}")


PHI3 = BackboneFamily(
    name="phi3", model_types=("phi3", "phi4mm", "phi4_multimodal"),
    attention_in=("qkv_proj",), mlp_in=("gate_up_proj",),
    model_class=Phi3Model, apply_rotary=apply_rotary_pos_emb, hf_config=hf_config, read_config=read_config,
    check=check,
)
