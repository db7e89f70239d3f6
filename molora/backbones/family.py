"""What a backbone family is: everything about one decoder architecture that molora needs.

A family names transformers' classes for its checkpoints (the configuration class, the decoder
``*Model`` whose embeddings, layers, norms and rotary embedding molora runs, the rotary function),
how its attention and MLP input projections are laid out (one fused linear or one linear per
projection), and how it reads a transformers ``config.json`` into molora's ``BackboneConfig``.
From that follow the decoder linears an adapter can go on (all of them, by default), their
shapes, and the routed decoder (``molora/decoder.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import BackboneConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class BackboneFamily:
    name: str  # BackboneConfig.family
    model_types: tuple[str, ...]  # config.json ``model_type`` values whose decoder this family reads
    # the linears that make queries / keys / values and the MLP's gate / up inputs, in output order:
    # one fused linear (its output split in that order) or one linear per projection
    attention_in: tuple[str, ...]
    mlp_in: tuple[str, ...]
    model_class: type  # transformers' decoder (``Phi3Model``, ``LlamaModel``, ...)
    apply_rotary: Callable  # transformers' ``apply_rotary_pos_emb`` of the family: (q, k, cos, sin) -> (q, k)
    hf_config: Callable[[BackboneConfig], object]  # transformers' configuration with the decoder's values
    read_config: Callable[[dict, BackboneConfig], BackboneConfig]  # a flat config.json -> BackboneConfig
    check: Callable[[BackboneConfig], None]  # a ConfigError for a BackboneConfig the family cannot build

    @property
    def linears(self) -> tuple[tuple[str, str], ...]:
        """(block, name) of every linear of a layer, in layer order; PEFT names them
        ``model.layers.N.<block>.<name>``."""
        return (*(("self_attn", n) for n in self.attention_in), ("self_attn", "o_proj"),
                *(("mlp", n) for n in self.mlp_in), ("mlp", "down_proj"))

    @property
    def adapted_by_default(self) -> list[str]:
        """``LoraSpec.target_modules`` when a spec names none: every projection of a layer."""
        return [name for _, name in self.linears]

    def linear_shapes(self, b: BackboneConfig) -> dict[str, tuple[int, int]]:
        """name -> (out_features, in_features) of each linear of a layer."""
        d, kv = b.head_dim, b.num_key_value_heads * b.head_dim
        q_k_v = (b.num_attention_heads * d, kv, kv)
        gate_up = (b.intermediate_size, b.intermediate_size)
        shapes = {"o_proj": (b.hidden_size, b.num_attention_heads * d), "down_proj": (b.hidden_size, b.intermediate_size)}
        for names, outs in ((self.attention_in, q_k_v), (self.mlp_in, gate_up)):
            if len(names) == 1:
                shapes[names[0]] = (sum(outs), b.hidden_size)
            else:
                shapes.update({n: (o, b.hidden_size) for n, o in zip(names, outs)})
        return shapes

    def build(self, b: BackboneConfig):
        """The routed decoder of ``b`` (random init; checkpoints load over it)."""
        from ..decoder import RoutedDecoder

        self.check(b)
        return RoutedDecoder(self, self.hf_config(b))


def refuse_unless(ok: bool, reason: str, item: str = "backbone") -> None:
    if not ok:
        raise ConfigError(reason, item)
