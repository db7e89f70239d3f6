"""The decoder run by molora: transformers' modules and weights of the backbone family, molora's forward.

The backbone is built by transformers (the family's ``*Model``, ``molora/backbones``: embeddings,
decoder layers, RMSNorms, rotary embedding; the same parameter names as every checkpoint) and its
layers run ``RoutedDecoderLayer.forward``, which takes what a call needs as arguments: the
``TokenRoute`` of the routed LoRA linears, the attention kernel with its inputs (``Attend``), the
KV cache, and, for the last layer, the narrower route of the positions whose output is read. The
computation is transformers' decoder layer's, token for token:

    h = h + dropout(o_proj(attention(rotary(q, k), v)))      q, k, v from the attention input linears of norm1(h)
    h = h + dropout(down_proj(act(gate) * up))               gate, up from the MLP input linears of norm2(h)

where the family lays out the input linears: one fused linear whose output is split (phi3's
``qkv_proj`` / ``gate_up_proj``) or one linear per projection (llama's ``q_proj`` ... ``up_proj``).
Padding tokens (when the route drops them) never enter a linear or an MLP: the routed linears
and norms run on the route's kept tokens, attention runs on the padded layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .adapters.lora import RoutedLoRALinear
from .adapters.route import TokenRoute
from .attention import LengthGroups, grouped_attention, packed_attention, padded_attention
from .swiglu import gated

__all__ = ["Attend", "RoutedDecoderLayer", "RoutedDecoder"]


@dataclass(frozen=True)
class Attend:
    """The attention kernel of one forward call and its inputs (see ``molora/attention.py``)."""

    kind: str = "padded"  # padded | length_groups | packed
    mask: torch.Tensor | None = None  # padded / length_groups: [B, 1, Tq, Tk] bool, or None (causal)
    groups: LengthGroups | None = None
    cu_seqlens: torch.Tensor | None = None  # packed: [rows + 1] starts of the rows
    lengths: tuple = ()  # packed: row lengths
    backend: str = "rows"  # packed: rows | block | flex | flex_eager | flash
    block_mask: object = None  # packed, flex kernels: the rows' FlexAttention BlockMask (built once per call)

    def __call__(self, q, k, v, dropout: float, scale: float) -> torch.Tensor:
        if self.kind == "packed":
            return packed_attention(q, k, v, self.cu_seqlens, list(self.lengths), self.backend, dropout, scale,
                                    self.block_mask)
        if self.kind == "length_groups":
            return grouped_attention(q, k, v, self.mask, self.groups, dropout, scale)
        return padded_attention(q, k, v, self.mask, dropout, scale)


class RoutedDecoderLayer(nn.Module):
    """A transformers decoder layer's submodules and parameters (``self_attn``, ``mlp``, the two
    norms) run with a route; the family (``molora/backbones``) says which linears make q / k / v and
    gate / up, and rotates q / k."""

    def __init__(self, family, layer: nn.Module):
        super().__init__()
        self.family = family
        self.self_attn, self.mlp = layer.self_attn, layer.mlp
        self.input_layernorm, self.post_attention_layernorm = layer.input_layernorm, layer.post_attention_layernorm
        # phi3's residual dropouts; llama-shaped layers have none
        self.resid_attn_dropout = getattr(layer, "resid_attn_dropout", nn.Identity())
        self.resid_mlp_dropout = getattr(layer, "resid_mlp_dropout", nn.Identity())

    def forward(self, h: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], route: TokenRoute,
                attend: Attend, cache=None, narrow: TokenRoute | None = None) -> torch.Tensor:
        """``h`` [B, T, D] -> [B, T, D]; with ``narrow``, [n, D]: only the positions ``narrow.kept``
        (in that order) go through ``o_proj`` and the MLP (keys and values are still those of every
        token, for attention and the cache)."""
        attn, mlp, fam = self.self_attn, self.mlp, self.family
        B, T, _ = h.shape
        d, nq, nkv = attn.head_dim, attn.config.num_attention_heads, attn.config.num_key_value_heads
        x = self.input_layernorm(route.gather(h))
        qkv = [route.scatter(_linear(getattr(attn, n), x, route)) for n in fam.attention_in]
        q, k, v = qkv if len(qkv) == 3 else qkv[0].split([nq * d, nkv * d, nkv * d], dim=-1)
        q, k, v = (t.view(B, T, -1, d).transpose(1, 2) for t in (q, k, v))
        cos, sin = position_embeddings
        q, k = fam.apply_rotary(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, attn.layer_idx)
        o = attend(q, k, v, attn.attention_dropout if self.training else 0.0, attn.scaling).reshape(B, T, nq * d)
        r = route if narrow is None else narrow
        h = r.gather(h) + self.resid_attn_dropout(_linear(attn.o_proj, r.gather(o), r))
        x = self.post_attention_layernorm(h)
        inner = gated([_linear(getattr(mlp, n), x, r) for n in fam.mlp_in], getattr(mlp, "act_fn", None))
        out = self.resid_mlp_dropout(_linear(mlp.down_proj, inner, r))
        return h + out if narrow is not None else r.scatter_sum(h, out)


def _linear(module, x: torch.Tensor, route: TokenRoute) -> torch.Tensor:
    """A decoder linear: routed when some adapter adapts it, plain otherwise (``layers_to_transform``)."""
    return module(x, route) if isinstance(module, RoutedLoRALinear) else module(x)


class RoutedDecoder(nn.Module):
    """The family's transformers decoder (embeddings, layers, final norm, rotary embedding: its
    modules, under its names) run layer by layer with a route; ``activation_checkpointing``
    recomputes each layer in backward (its route is an argument, so the recomputation sees the
    same one)."""

    def __init__(self, family, config):
        super().__init__()
        built = family.model_class(config)
        self.config = config
        self.embed_tokens = built.embed_tokens  # registered in transformers' order: the state dict's key order
        self.layers = nn.ModuleList(RoutedDecoderLayer(family, layer) for layer in built.layers)
        self.norm, self.rotary_emb = built.norm, built.rotary_emb
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
