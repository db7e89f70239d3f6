"""The frozen Phi-4-mini decoder: transformers' Phi-3 architecture built from a BackboneConfig."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, Phi3Config, Phi3Model
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .config import BackboneConfig

ATTENTION = "molora_sdpa"


def sdpa_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                       **kwargs):
    """transformers' "sdpa" attention, except that on CPU grouped-query attention runs on the
    key/value heads as they are (``enable_gqa``) instead of copying them once per query head
    first: the same forward numbers (CPU flash attention reads head ``h // n_rep``), a faster
    backward, and no repeated K/V kept for it. Other devices use transformers' function."""
    packed = kwargs.get("packed_rows")  # molora/packing.py: one padding-free sequence, attention per row
    if packed is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2] == packed.n:
        return packed.attention(query, key, value, dropout, scaling), None
    n_rep = getattr(module, "num_key_value_groups", 1)
    if query.device.type != "cpu" or n_rep == 1 or kwargs.get("softcap") is not None \
            or kwargs.get("output_attentions") or kwargs.get("position_bias") is not None \
            or kwargs.get("cache") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    q_len = query.shape[2]
    groups = kwargs.get("length_groups")
    if groups is not None and attention_mask is not None and attention_mask.dtype == torch.bool \
            and q_len == key.shape[2] == groups.length:
        return _grouped_attention(query, key, value, attention_mask, groups, dropout, scaling), None
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(q_len > 1 and attention_mask is None and is_causal)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, is_causal=is_causal, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


class LengthGroups:
    """Rows of a padded batch bucketed by real length, for attention: each group attends inside
    the window of its longest row (``[0, n)`` for right padding, ``[T - n, T)`` for left), so a
    batch that mixes 80- and 230-token rows does not pay 230^2 attention for the short ones.
    Outputs at padding positions (outside a row's window) are 0; nothing reads them (the routed
    linears drop padding tokens)."""

    def __init__(self, length: int, groups: list[tuple[torch.Tensor, int, int]]):
        self.length, self.groups = length, groups

    @classmethod
    def plan(cls, attention_mask: torch.Tensor, min_saving: float = 0.2) -> "LengthGroups | None":
        """None unless every row is one run of real tokens at the same end, and grouping saves at
        least ``min_saving`` of the attention work."""
        mask = attention_mask.bool()
        B, T = mask.shape
        lens = mask.sum(-1)
        pos = torch.arange(T, device=mask.device)
        if bool((mask == (pos[None, :] < lens[:, None])).all()):
            right = True
        elif bool((mask == (pos[None, :] >= T - lens[:, None])).all()):
            right = False
        else:
            return None
        order = torch.argsort(lens, descending=True).tolist()
        lens_l = lens.tolist()
        buckets: list[list[int]] = []
        for r in order:  # longest first; a row joins the open bucket while it is at least 3/4 as long
            if buckets and lens_l[r] * 4 >= lens_l[buckets[-1][0]] * 3:
                buckets[-1].append(r)
            else:
                buckets.append([r])
        cost = sum(len(b) * lens_l[b[0]] ** 2 for b in buckets)
        if len(buckets) < 2 or cost > (1 - min_saving) * B * T * T:
            return None
        groups = []
        for b in buckets:
            n = max(lens_l[b[0]], 1)
            lo, hi = (0, n) if right else (T - n, T)
            groups.append((torch.tensor(sorted(b), device=mask.device), lo, hi))
        return cls(T, groups)


def _grouped_attention(query, key, value, mask, groups: LengthGroups, dropout, scaling):
    B, H, T, D = query.shape
    out = query.new_zeros(B, T, H, value.shape[-1])
    for rows, lo, hi in groups.groups:
        o = F.scaled_dot_product_attention(query[rows, :, lo:hi], key[rows, :, lo:hi], value[rows, :, lo:hi],
                                           attn_mask=mask[rows][:, :, lo:hi, lo:hi], dropout_p=dropout,
                                           scale=scaling, enable_gqa=True)
        out = out.index_put((rows[:, None], torch.arange(lo, hi, device=out.device)[None, :]), o.transpose(1, 2))
    return out


AttentionInterface.register(ATTENTION, sdpa_gqa_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks "sdpa" gets


def phi3_config(b: BackboneConfig, attn_implementation: str = ATTENTION) -> Phi3Config:
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
    from .swiglu import use_swiglu

    model = Phi3Model(phi3_config(b))
    use_swiglu(model)
    return model
