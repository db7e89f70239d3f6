"""The Phi-4-multimodal conformer speech encoder.

log-mel [B, T, 80]
  -> (x - global_mean) * global_invstd                     ``encoder_embedding``
  -> NeMo "dw_striding" subsampling, time / 8                ``embed``
     Conv2d(1, C, 3, s2) ReLU, then twice {depthwise Conv2d(C, C, 3, s2), Conv2d(C, C, 1), ReLU};
     80 mel bins -> 10; Linear(C * 10 -> D)
  -> split into independent windows of ``max_seq_len`` frames (500 = 40 s) when longer
  -> ``num_blocks`` conformer blocks                         ``encoders.N``
     x + 0.5 FF_in(x); + MHSA(LN(x)) with a T5 relative bias; + ConvModule(x);
     + 0.5 FF_out(x); LayerNorm
  -> [B, T', D], T' = ceil(T / 8)

Attribute names follow the official ``phi4mm`` checkpoint, so ``state_dict()`` keys are the
official keys minus ``model.embed_tokens_extend.audio_embed.encoder.``
(``embed.conv.0.weight``, ``encoders.0.feed_forward_in.net.0.linear.weight``,
``encoders.0.self_attn.linear_q.weight``, ``encoders.0.conv.glu.b1``, ...).
:data:`TRANSFORMERS_KEY_RENAMES`, :func:`to_transformers_keys` and
:func:`from_transformers_keys` translate to and from transformers' ``Phi4MultimodalAudioModel``.

Differences from the reference implementations (transformers and the original code behave
the same here), all about padding; an unpadded clip of <= ``max_seq_len`` frames after
subsampling, or a whole multiple of it, gives the reference's numbers:

* Padding is masked with -inf in attention. The reference adds the boolean mask to the bias
  (+1 for valid keys, +0 for padding), which barely masks anything.
* Padded frames are zeroed before each stride-2 convolution of the subsampling, so the
  convolutions see exactly the zeros a clip run alone would see at its end.
* Together: every row of a padded batch equals that clip run alone, and padded output
  positions are 0.
* The zero frames that fill the last ``max_seq_len`` window of a long clip are masked too
  (the reference attends to them when no mask is given), so each window equals that stretch
  of frames encoded on its own.
* Chunk masks (``chunk_size > 0``, streaming) are -inf masks; the reference's training-time
  random chunk layout is not reproduced (the published config has ``chunk_size = -1``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import AudioConfig
from ..errors import ConfigError
from ..keymap import rename_keys

_ACTIVATIONS = {
    "swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh, "linear": nn.Identity, "identity": nn.Identity, "": nn.Identity,
}


def _act(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ConfigError(f"unknown activation {name!r} (one of {sorted(_ACTIVATIONS)})", "audio") from None


# ----------------------------------------------------------------------------------------
# key names
# ----------------------------------------------------------------------------------------
TRANSFORMERS_KEY_RENAMES: list[tuple[str, str]] = [
    (r"^(encoders\.\d+\.feed_forward_(?:in|out))\.net\.0\.linear\.", r"\1.gate_up_proj."),
    (r"^(encoders\.\d+\.feed_forward_(?:in|out))\.net\.2\.", r"\1.down_proj."),
    (r"^(encoders\.\d+\.self_attn)\.linear_([qkv])\.", r"\1.\2_proj."),
    (r"^(encoders\.\d+\.self_attn)\.linear_out\.", r"\1.o_proj."),
]
"""Official-style key (relative to the encoder) -> transformers key (relative to
``model.embed_tokens_extend.audio_embed.encoder.``); every other key is the same in both."""

_FROM_TRANSFORMERS: list[tuple[str, str]] = [
    (r"^(encoders\.\d+\.feed_forward_(?:in|out))\.gate_up_proj\.", r"\1.net.0.linear."),
    (r"^(encoders\.\d+\.feed_forward_(?:in|out))\.down_proj\.", r"\1.net.2."),
    (r"^(encoders\.\d+\.self_attn)\.([qkv])_proj\.", r"\1.linear_\2."),
    (r"^(encoders\.\d+\.self_attn)\.o_proj\.", r"\1.linear_out."),
]


def to_transformers_keys(sd: dict, prefix: str = "") -> dict:
    """Official / molora encoder keys -> transformers' ``Phi4MultimodalAudioModel`` keys.

    Keys that start with ``prefix`` are renamed after it (``prefix`` is kept); others pass
    through unchanged.
    """
    return rename_keys(sd, TRANSFORMERS_KEY_RENAMES, prefix)


def from_transformers_keys(sd: dict, prefix: str = "") -> dict:
    """transformers' ``Phi4MultimodalAudioModel`` keys -> official / molora encoder keys."""
    return rename_keys(sd, _FROM_TRANSFORMERS, prefix)


# ----------------------------------------------------------------------------------------
# modules (names = official checkpoint names)
# ----------------------------------------------------------------------------------------
class MeanVarianceNorm(nn.Module):
    """Global CMVN with stored statistics: ``(x - global_mean) * global_invstd``."""

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("global_mean", torch.zeros(size))
        self.register_buffer("global_invstd", torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.global_mean) * self.global_invstd


class NemoConvSubsampling(nn.Module):
    """NeMo "dw_striding": log2(time_reduction) stride-2 3x3 convolutions over (time, mel), then Linear."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        steps = int(round(math.log2(cfg.time_reduction)))
        if cfg.time_reduction < 2 or 2 ** steps != cfg.time_reduction:
            raise ConfigError("time_reduction must be a power of 2 (>= 2)", "audio.time_reduction")
        c = cfg.nemo_conv_channels
        layers: list[nn.Module] = [nn.Conv2d(1, c, 3, stride=2, padding=1), _act(cfg.nemo_activation)]
        for _ in range(steps - 1):
            layers += [nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c), nn.Conv2d(c, c, 1),
                       _act(cfg.nemo_activation)]
        self.conv = nn.Sequential(*layers)
        freq = cfg.input_size
        for _ in range(steps):
            freq = (freq - 1) // 2 + 1
        self.out = nn.Linear(c * freq, cfg.hidden_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, T, F] -> ([B, ceil(T / r), D], valid lengths or None)."""
        x = x.unsqueeze(1)  # [B, 1, T, F]
        # without autograd the (large) activations are overwritten in place: no copies
        inplace = not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))
        fresh = False  # x is a tensor this forward made (safe to overwrite)
        for layer in self.conv:
            if lengths is not None and isinstance(layer, nn.Conv2d) and layer.stride[0] > 1:
                drop = (torch.arange(x.shape[2], device=x.device)[None, :] >= lengths[:, None])[:, None, :, None]
                # what a solo run's zero padding looks like
                x = x.masked_fill_(drop, 0.0) if inplace and fresh else x.masked_fill(drop, 0.0)
                lengths = (lengths - 1) // 2 + 1  # kernel 3, stride 2, padding 1
            if inplace and fresh and isinstance(layer, nn.ReLU):
                x = x.relu_()
            elif layer is self.conv[0]:
                x = _first_conv_channels_last(layer, x)
            else:
                x = layer(x)  # channels-last in, channels-last out (depthwise: ~10x faster on CPU than NCHW)
            fresh = True
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f)), lengths


def _first_conv_channels_last(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The single-input-channel first convolution as one matmul over 3x3 patches, returning a
    channels-last [B, C, T', F'] tensor (the layout the depthwise convolutions after it run fast
    in); oneDNN's direct kernel for one input channel is several times slower."""
    b, _, t, f = x.shape
    (kt, kf), (st, sf), (pt, pf) = conv.kernel_size, conv.stride, conv.padding
    cols = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # [B, kt*kf, T'*F']
    t_out, f_out = (t + 2 * pt - kt) // st + 1, (f + 2 * pf - kf) // sf + 1
    w = conv.weight.reshape(conv.out_channels, -1)
    y = cols.transpose(1, 2).reshape(-1, w.shape[1])
    y = torch.addmm(conv.bias, y, w.t()) if conv.bias is not None else y @ w.t()
    return y.view(b, t_out, f_out, -1).permute(0, 3, 1, 2)


class RelativeAttentionBias(nn.Module):
    """T5-style bias: one learned value per head for each clipped offset ``j - i``."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.max_distance = cfg.bias_max_distance
        self.symmetric = cfg.bias_symmetric
        buckets = self.max_distance if self.symmetric else 2 * self.max_distance
        self.bias_values = nn.Embedding(buckets, cfg.num_attention_heads)

    def forward(self, length: int) -> torch.Tensor:
        """-> [1, H, length, length]"""
        pos = torch.arange(length, device=self.bias_values.weight.device)
        rel = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance - 1)
        idx = rel.abs().clamp(max=self.max_distance - 1) if self.symmetric else rel + self.max_distance
        return self.bias_values(idx).permute(2, 0, 1).unsqueeze(0)


class GLULinear(nn.Module):
    def __init__(self, d_in: int, d_out: int, activation: str):
        super().__init__()
        self.linear = nn.Linear(d_in, 2 * d_out)
        self.act = _act(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * self.act(gate)


class FeedForward(nn.Module):
    """LN -> GLU Linear (D -> 2I, value * act(gate)) -> Linear (I -> D)."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.hidden_size)
        self.net = nn.Sequential(
            GLULinear(cfg.hidden_size, cfg.intermediate_size, cfg.activation),
            nn.Dropout(cfg.dropout_rate),
            nn.Linear(cfg.intermediate_size, cfg.hidden_size),
            nn.Dropout(cfg.dropout_rate),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.layer_norm(x))


class MultiHeadedAttention(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        d, h = cfg.hidden_size, cfg.num_attention_heads
        if d % h:
            raise ConfigError("hidden_size must be divisible by num_attention_heads", "audio")
        self.heads, self.dropout = h, cfg.dropout_rate
        self.linear_q, self.linear_k, self.linear_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.linear_out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (lin(x).view(b, t, self.heads, -1).transpose(1, 2)
                   for lin in (self.linear_q, self.linear_k, self.linear_v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, d))


class GLUPointWiseConv(nn.Module):
    """1x1 conv D -> 2C, then ``(a + b1) * act(g + b2)``."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.out_channels = cfg.ext_pw_out_channel
        self.ext_pw_conv_1d = nn.Conv1d(cfg.hidden_size, 2 * cfg.ext_pw_out_channel, 1)
        self.b1 = nn.Parameter(torch.zeros(1, cfg.ext_pw_out_channel, 1))
        self.b2 = nn.Parameter(torch.zeros(1, cfg.ext_pw_out_channel, 1))
        self.act = _act(cfg.conv_glu_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, C], channels last
        h = F.linear(x, self.ext_pw_conv_1d.weight.squeeze(-1), self.ext_pw_conv_1d.bias)
        a, g = h.split(self.out_channels, dim=-1)
        return (a + self.b1.view(-1)) * self.act(g + self.b2.view(-1))


class DepthWiseSeparableConv1d(nn.Module):
    """Causal depthwise conv (left-padded by kernel - 1) followed by a 1x1 conv."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        d, m = cfg.hidden_size, cfg.depthwise_multiplier
        self.kernel_size = cfg.kernel_size
        self.dw_conv = nn.Conv1d(d, d * m, cfg.kernel_size, groups=d)
        self.pw_conv = nn.Conv1d(d * m, cfg.depthwise_separable_out_channel, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, C]
        # Same as the reference's symmetric padding of kernel - 1 followed by trimming the last
        # kernel - 1 outputs: output t sees inputs t - kernel + 1 .. t.
        h = self.dw_conv(F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0)))
        return F.linear(h.transpose(1, 2), self.pw_conv.weight.squeeze(-1), self.pw_conv.bias)


class ConvModule(nn.Module):
    """LN -> GLU pointwise conv -> causal depthwise separable conv -> act -> 1x1 conv."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.hidden_size)
        self.glu = GLUPointWiseConv(cfg)
        self.dw_sep_conv_1d = DepthWiseSeparableConv1d(cfg)
        self.act = _act(cfg.conv_activation)
        self.ext_pw_conv_1d = nn.Conv1d(cfg.hidden_size, cfg.ext_pw_out_channel, 1)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.dw_sep_conv_1d(self.glu(self.layer_norm(x))))
        return self.dropout(F.linear(h, self.ext_pw_conv_1d.weight.squeeze(-1), self.ext_pw_conv_1d.bias))


class ConformerBlock(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.feed_forward_in = FeedForward(cfg)
        self.self_attn = MultiHeadedAttention(cfg)
        self.conv = ConvModule(cfg)
        self.feed_forward_out = FeedForward(cfg)
        self.layer_norm_att = nn.LayerNorm(cfg.hidden_size)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.feed_forward_in(x)
        x = x + self.self_attn(self.layer_norm_att(x), bias)
        x = x + self.conv(x)
        x = x + 0.5 * self.feed_forward_out(x)
        return self.layer_norm(x)


# ----------------------------------------------------------------------------------------
# the encoder
# ----------------------------------------------------------------------------------------
class ConformerEncoder(nn.Module):
    """Phi-4-multimodal's conformer: ``forward(features [B, T, 80], mask [B, T] bool | None)``
    -> ``(hidden [B, ceil(T / 8), D], mask_out [B, ceil(T / 8)] bool)``."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.config = config
        self.encoder_embedding = MeanVarianceNorm(config.input_size)
        self.embed = NemoConvSubsampling(config)
        self.relative_attention_bias_layer = RelativeAttentionBias(config)
        self.encoders = nn.ModuleList(ConformerBlock(config) for _ in range(config.num_blocks))
        self.gradient_checkpointing = False

    def _check_runnable(self) -> None:
        """The conv module maps hidden_size back onto itself only when both channel counts equal it.
        transformers builds (and saves) encoders whose counts differ (its tester's: hidden 32, ext_pw 1024,
        depthwise 128); they load, and fail here, as in transformers, only when audio is run."""
        c = self.config
        wrong = [f"{name} {getattr(c, name)}" for name in ("ext_pw_out_channel", "depthwise_separable_out_channel")
                 if getattr(c, name) != c.hidden_size]
        if wrong:
            raise ConfigError(f"this audio encoder cannot run audio: {' and '.join(wrong)} must equal hidden_size "
                              f"{c.hidden_size}", "audio")

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames after subsampling: ceil(T / time_reduction)."""
        return -(-lengths // self.config.time_reduction)

    def _attention_bias(self, length: int, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Relative bias, -inf for padded keys (and outside the chunk window): [N or 1, H, L, L]."""
        bias = self.relative_attention_bias_layer(length).to(dtype)
        neg = torch.finfo(dtype).min if dtype in (torch.float16, torch.bfloat16) else float("-inf")
        allowed = valid[:, None, None, :]  # [N, 1, 1, L]: key j is a real frame
        cs = self.config.chunk_size
        if cs > 0:  # streaming: chunk c sees chunks c - left_chunk .. c
            pos = torch.arange(length, device=valid.device)
            chunk = pos // cs
            start = (chunk - self.config.left_chunk).clamp(min=0) * cs
            allowed = allowed & ((pos[None, :] >= start[:, None]) & (pos[None, :] < ((chunk + 1) * cs)[:, None]))
        if bool(allowed.all()):
            return bias
        # A query with no visible key (a padding frame, e.g. a window made only of padding)
        # attends freely: its output is padding, but it must stay finite (0 * NaN = NaN).
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
        return bias.masked_fill(~allowed, neg)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_runnable()
        b, t, _ = features.shape
        if t == 0:
            raise ConfigError("audio features have no frames", "audio_input_features")
        x = self.encoder_embedding(features)
        lengths = mask.sum(dim=1).long() if mask is not None else None
        x, _ = self.embed(x, lengths)
        t_out = x.shape[1]
        out_len = self.output_lengths(lengths) if lengths is not None else torch.full((b,), t_out, device=x.device)
        valid = torch.arange(t_out, device=x.device)[None, :] < out_len[:, None]

        window = self.config.max_seq_len
        n_win = 1
        if t_out > window:  # independent windows of max_seq_len frames; the tail is padding
            n_win = -(-t_out // window)
            pad = n_win * window - t_out
            x = F.pad(x, (0, 0, 0, pad)).reshape(b * n_win, window, -1)
            win_valid = F.pad(valid, (0, pad)).reshape(b * n_win, window)
        else:
            win_valid = valid
        bias = self._attention_bias(x.shape[1], win_valid, x.dtype)

        for block in self.encoders:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, bias, use_reentrant=False)
            else:
                x = block(x, bias)

        x = x.reshape(b, n_win * x.shape[1], -1)[:, :t_out]
        return x.masked_fill(~valid[..., None], 0.0), valid


__all__ = [
    "ConformerEncoder",
    "TRANSFORMERS_KEY_RENAMES",
    "from_transformers_keys",
    "to_transformers_keys",
]
