"""The decoder run by molora: transformers' Phi-3 modules and weights, molora's forward.

The backbone is built by transformers (``Phi3Model``: embeddings, decoder layers, RMSNorms, rotary
embedding with LongRoPE; the same parameter names as every checkpoint) and its layers run
``RoutedDecoderLayer.forward``, which takes what a call needs as arguments: the ``TokenRoute`` of the
routed LoRA linears, the attention kernel with its inputs (``Attend``), the KV cache, and, for the
last layer, the narrower route of the positions whose output is read. The computation is
transformers' ``Phi3DecoderLayer``'s, token for token:

    h = h + dropout(o_proj(attention(rotary(qkv_proj(norm1(h))))))
    h = h + dropout(down_proj(up * silu(gate)))     with [gate | up] = gate_up_proj(norm2(h))

Padding tokens (when the route drops them) never enter a linear or an MLP: the routed linears
and norms run on the route's kept tokens, attention runs on the padded layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer, Phi3Model, apply_rotary_pos_emb

from .adapters.lora import RoutedLoRALinear
from .adapters.route import TokenRoute
from .attention import LengthGroups, grouped_attention, packed_attention, padded_attention
from .swiglu import silu_gate

__all__ = ["Attend", "RoutedDecoderLayer", "RoutedDecoder"]


@dataclass(frozen=True)
class Attend:
    """The attention kernel of one forward call and its inputs (see ``molora/attention.py``)."""

    kind: str = "padded"  # padded | length_groups | packed
    mask: torch.Tensor | None = None  # padded / length_groups: [B, 1, Tq, Tk] bool, or None (causal)
    groups: LengthGroups | None = None
    cu_seqlens: torch.Tensor | None = None  # packed: [rows + 1] starts of the rows
    lengths: tuple = ()  # packed: row lengths
    backend: str = "rows"  # packed: rows | block | flash

    def __call__(self, q, k, v, dropout: float, scale: float) -> torch.Tensor:
        if self.kind == "packed":
            return packed_attention(q, k, v, self.cu_seqlens, list(self.lengths), self.backend, dropout, scale)
        if self.kind == "length_groups":
            return grouped_attention(q, k, v, self.mask, self.groups, dropout, scale)
        return padded_attention(q, k, v, self.mask, dropout, scale)


class RoutedDecoderLayer(Phi3DecoderLayer):
    """``Phi3DecoderLayer`` (same submodules and parameters) whose forward takes its route."""

    def forward(self, h: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], route: TokenRoute,
                attend: Attend, cache=None, narrow: TokenRoute | None = None) -> torch.Tensor:
        """``h`` [B, T, D] -> [B, T, D]; with ``narrow``, [n, D]: only the positions ``narrow.kept``
        (in that order) go through ``o_proj`` and the MLP (keys and values are still those of every
        token, for attention and the cache)."""
        attn, mlp = self.self_attn, self.mlp
        B, T, _ = h.shape
        d, nq, nkv = attn.head_dim, attn.config.num_attention_heads, attn.config.num_key_value_heads
        qkv = route.scatter(_linear(attn.qkv_proj, self.input_layernorm(route.gather(h)), route))
        q, k, v = qkv.split([nq * d, nkv * d, nkv * d], dim=-1)
        q, k, v = (t.view(B, T, -1, d).transpose(1, 2) for t in (q, k, v))
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, attn.layer_idx)
        o = attend(q, k, v, attn.attention_dropout if self.training else 0.0, attn.scaling).reshape(B, T, nq * d)
        r = route if narrow is None else narrow
        h = r.gather(h) + self.resid_attn_dropout(_linear(attn.o_proj, r.gather(o), r))
        x = self.post_attention_layernorm(h)
        h = h + self.resid_mlp_dropout(_linear(mlp.down_proj, silu_gate(_linear(mlp.gate_up_proj, x, r)), r))
        return h if narrow is not None else r.scatter(h)


def _linear(module, x: torch.Tensor, route: TokenRoute) -> torch.Tensor:
    """A decoder linear: routed when some adapter adapts it, plain otherwise (``layers_to_transform``)."""
    return module(x, route) if isinstance(module, RoutedLoRALinear) else module(x)


class RoutedDecoder(Phi3Model):
    """``Phi3Model`` (embeddings, layers, final norm, rotary embedding) run layer by layer with a
    route; ``activation_checkpointing`` recomputes each layer in backward (its route is an argument,
    so the recomputation sees the same one)."""

    def __init__(self, config):
        super().__init__(config)
        for layer in self.layers:
            layer.__class__ = RoutedDecoderLayer
        self.activation_checkpointing = False

    def forward(self, embeds: torch.Tensor, position_ids: torch.Tensor, route: TokenRoute, attend: Attend,
                cache=None, narrow: TokenRoute | None = None) -> torch.Tensor:
        """Final hidden states (after the last norm): [B, T, D], or [n, D] for ``narrow.kept``."""
        position_embeddings = self.rotary_emb(embeds, position_ids=position_ids)
        h = embeds
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            args = (h, position_embeddings, route, attend, cache, narrow if i == last else None)
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(layer, *args, use_reentrant=False)
            else:
                h = layer(*args)
        return self.norm(h)
