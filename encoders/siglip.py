"""The SigLIP vision tower of Phi-4-multimodal, with NaViT-style embeddings for padded crops.

Parameter names follow Hugging Face's SigLIP (as stored under ``img_processor.`` in the
official checkpoint): ``embeddings.{patch_embedding,position_embedding}``,
``encoder.layers.N.{layer_norm1,self_attn.{q,k,v,out}_proj,layer_norm2,mlp.{fc1,fc2}}``,
``post_layernorm`` and the attention-pooling ``head.*``. Phi-4-multimodal reads the features
of ``hidden_states[feature_layer]`` (-2: the output of the second-to-last layer), so
``forward`` runs only the layers up to that one; ``post_layernorm`` and ``head`` are kept so
that checkpoints load, and are available through ``pooled``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from molora.config import VisionConfig
from molora.errors import ConfigError

__all__ = ["SiglipVisionTower", "bucketised_position_ids"]

_ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


def bucketised_position_ids(patch_mask: torch.Tensor, grid: int) -> torch.Tensor:
    """Position ids [B, h*w] for crops whose valid patches fill the top-left of the grid.

    The valid region of each crop (``rows x cols`` patches) is spread over the whole
    ``grid x grid`` position table: patch ``(i, j)`` takes the bucket of ``i / rows`` and
    ``j / cols`` among ``grid`` equal buckets. Padding patches take position 0. The float
    arithmetic is the reference's (it decides the bucket at exact boundaries).
    """
    b, h, w = patch_mask.shape
    dev = patch_mask.device
    boundaries = torch.arange(1 / grid, 1.0, 1 / grid, device=dev)
    rows = patch_mask[:, :, 0].sum(1)
    cols = patch_mask[:, 0, :].sum(1)
    frac_r = torch.arange(h, device=dev, dtype=torch.float32)[None] * (1.0 / rows)[:, None]
    frac_c = torch.arange(w, device=dev, dtype=torch.float32)[None] * (1.0 / cols)[:, None]
    bucket_r = torch.bucketize(frac_r.clamp(max=1.0 - 1e-6), boundaries, right=True)
    bucket_c = torch.bucketize(frac_c.clamp(max=1.0 - 1e-6), boundaries, right=True)
    ids = (bucket_r[:, :, None] * grid + bucket_c[:, None, :]).view(b, h * w)
    return ids.masked_fill(~patch_mask.view(b, h * w), 0)


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_patches_per_side = config.image_size // config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)
        self.position_embedding = nn.Embedding(self.num_patches_per_side**2, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        return x + self.position_embedding(bucketised_position_ids(patch_mask, self.num_patches_per_side))


class SiglipAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        d = config.hidden_size
        if d % config.num_attention_heads:
            raise ConfigError("hidden_size must be divisible by num_attention_heads", "vision")
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)), attn_mask=key_mask,
            dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class SiglipMLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.hidden_act not in _ACTIVATIONS:
            raise ConfigError(f"unsupported hidden_act {config.hidden_act!r}; one of {sorted(_ACTIVATIONS)}", "vision")
        self.act = _ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(LN1(x)), then + MLP(LN2(.))."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), key_mask)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers))


class SiglipPoolingHead(nn.Module):
    """SigLIP's multihead attention pooling (a learned probe attends over the patches)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)
        pad = None if valid is None else ~valid
        h = self.attention(probe, x, x, key_padding_mask=pad, need_weights=False)[0]
        return (h + self.mlp(self.layernorm(h)))[:, 0]


class SiglipVisionTower(nn.Module):
    """SigLIP ViT: ``forward(pixel_values [B,3,S,S], patch_attention_mask [B,S/p,S/p]) -> [B, P, D]``.

    Returns ``hidden_states[config.feature_layer]`` (index 0 = embeddings, i = output of
    layer i), running no layer past it. Padding patches (mask False) are masked as attention
    keys; their own outputs are computed but meaningless.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ConfigError("image_size must be a multiple of patch_size", "vision")
        self.config = config
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = SiglipPoolingHead(config)
        n = config.num_hidden_layers
        k = config.feature_layer
        if not -(n + 1) <= k <= n:
            raise ConfigError(f"feature_layer {k} out of range for {n} layers", "vision")
        self.num_layers_used = k if k >= 0 else n + 1 + k

    def _mask(self, pixel_values: torch.Tensor, patch_attention_mask: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = pixel_values.shape
        p = self.config.patch_size
        if patch_attention_mask is None:
            return torch.ones(b, h // p, w // p, dtype=torch.bool, device=pixel_values.device)
        return patch_attention_mask.to(device=pixel_values.device, dtype=torch.bool)

    @staticmethod
    def _key_mask(mask: torch.Tensor) -> torch.Tensor | None:
        valid = mask.flatten(1)
        if bool(valid.all()):
            return None
        # a crop with no valid patch would give NaN rows: let it attend everywhere instead
        valid = valid | ~valid.any(1, keepdim=True)
        return valid[:, None, None, :]

    def forward(self, pixel_values: torch.Tensor, patch_attention_mask: torch.Tensor | None = None,
                num_layers: int | None = None) -> torch.Tensor:
        mask = self._mask(pixel_values, patch_attention_mask)
        x = self.embeddings(pixel_values, mask)
        key_mask = self._key_mask(mask)
        for layer in self.encoder.layers[: self.num_layers_used if num_layers is None else num_layers]:
            x = layer(x, key_mask)
        return x

    def pooled(self, pixel_values: torch.Tensor, patch_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """SigLIP's image embedding: all layers, post-LayerNorm, attention pooling -> [B, D] (unused by Phi-4)."""
        mask = self._mask(pixel_values, patch_attention_mask)
        x = self.post_layernorm(self.forward(pixel_values, mask, num_layers=len(self.encoder.layers)))
        return self.head(x, mask.flatten(1))
