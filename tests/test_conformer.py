"""Conformer encoder: official key names, transformers key mapping, numerical equality with
transformers' Phi4MultimodalAudioModel on random weights, windowing, and padded batches that
equal solo runs (where the reference does not)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from molora.config import AudioConfig, MoLoRAConfig
from molora.encoders.conformer import (
    TRANSFORMERS_KEY_RENAMES,
    ConformerEncoder,
    from_transformers_keys,
    to_transformers_keys,
)

transformers = pytest.importorskip("transformers")
from transformers import Phi4MultimodalAudioConfig, Phi4MultimodalAudioModel  # noqa: E402
from transformers.models.phi4_multimodal.modeling_phi4_multimodal import adaptive_enc_mask  # noqa: E402

TOL = 5e-5  # fp32, values O(1), 4 blocks of reordered reductions


def tiny_audio(**overrides) -> AudioConfig:
    return dataclasses.replace(MoLoRAConfig.preset("tiny").audio, **overrides)


def hf_config(a: AudioConfig) -> Phi4MultimodalAudioConfig:
    """molora's AudioConfig in transformers' field names (bias_max_distance set explicitly:
    transformers' default is 1000, the checkpoint's 500)."""
    fields = ["hidden_size", "intermediate_size", "num_blocks", "num_attention_heads", "activation", "chunk_size",
              "left_chunk", "dropout_rate", "ext_pw_out_channel", "depthwise_separable_out_channel",
              "depthwise_multiplier", "kernel_size", "conv_activation", "input_size", "conv_glu_type",
              "time_reduction", "bias_max_distance", "bias_symmetric", "nemo_activation", "nemo_conv_channels",
              "downsample_rate"]
    return Phi4MultimodalAudioConfig(**{f: getattr(a, f) for f in fields})


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and buffer random and non-zero (LayerNorm gains around 1, invstd > 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            r = torch.randn(t.shape, generator=g, dtype=t.dtype)
            if name.endswith("global_invstd"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("global_mean"):
                t.copy_(3 * r)
            elif "layer_norm" in name and name.endswith("weight"):
                t.copy_(1 + 0.2 * r)
            else:
                t.copy_(0.2 * r)


@pytest.fixture(scope="module")
def pair():
    """(transformers model, molora encoder) with the same random weights, tiny preset."""
    cfg = tiny_audio()
    ref = Phi4MultimodalAudioModel(hf_config(cfg)).eval()
    randomise(ref, 0)
    ours = ConformerEncoder(cfg).eval()
    ours.load_state_dict(from_transformers_keys(ref.state_dict()))
    return ref, ours


def feats(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(*shape, generator=g) + 1


def windowed_reference(ref: Phi4MultimodalAudioModel, x: torch.Tensor, window: int) -> torch.Tensor:
    """The windowing definition, from transformers' own modules: subsample the whole clip, then
    encode each stretch of ``window`` frames on its own (the last one shorter, unpadded)."""
    h = ref.embed(ref.encoder_embedding(x), None)[0]
    outs = []
    for s in range(0, h.shape[1], window):
        w = h[:, s: s + window]
        bias = ref.relative_attention_bias_layer(w)
        for layer in ref.encoders:
            w = layer(w, bias)
        outs.append(w)
    return torch.cat(outs, dim=1)


# ---- key names ----------------------------------------------------------------------------------
def official_keys(num_blocks: int) -> set[str]:
    """The official phi4mm audio-encoder keys (model.embed_tokens_extend.audio_embed.encoder.*)."""
    keys = {"encoder_embedding.global_mean", "encoder_embedding.global_invstd",
            "relative_attention_bias_layer.bias_values.weight"}
    keys |= {f"embed.{m}.{p}" for m in ("conv.0", "conv.2", "conv.3", "conv.5", "conv.6", "out")
             for p in ("weight", "bias")}
    block = ["feed_forward_in.layer_norm", "feed_forward_in.net.0.linear", "feed_forward_in.net.2",
             "feed_forward_out.layer_norm", "feed_forward_out.net.0.linear", "feed_forward_out.net.2",
             "self_attn.linear_q", "self_attn.linear_k", "self_attn.linear_v", "self_attn.linear_out",
             "conv.layer_norm", "conv.glu.ext_pw_conv_1d", "conv.dw_sep_conv_1d.dw_conv",
             "conv.dw_sep_conv_1d.pw_conv", "conv.ext_pw_conv_1d", "layer_norm_att", "layer_norm"]
    for n in range(num_blocks):
        keys |= {f"encoders.{n}.{m}.{p}" for m in block for p in ("weight", "bias")}
        keys |= {f"encoders.{n}.conv.glu.b1", f"encoders.{n}.conv.glu.b2"}
    return keys


def test_state_dict_keys_are_official(pair):
    ref, ours = pair
    assert set(ours.state_dict()) == official_keys(ours.config.num_blocks)
    mapped = from_transformers_keys(ref.state_dict())
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_key_renames_round_trip(pair):
    ref, ours = pair
    hf_sd = ref.state_dict()
    assert set(to_transformers_keys(ours.state_dict())) == set(hf_sd)
    back = to_transformers_keys(from_transformers_keys(hf_sd))
    assert list(back) == list(hf_sd) and all(back[k] is hf_sd[k] for k in hf_sd)
    prefix = "model.embed_tokens_extend.audio_embed.encoder."
    full = {prefix + k: v for k, v in ours.state_dict().items()} | {"model.norm.weight": torch.ones(1)}
    renamed = to_transformers_keys(full, prefix=prefix)
    assert prefix + "encoders.1.self_attn.o_proj.weight" in renamed and "model.norm.weight" in renamed
    assert prefix + "encoders.0.feed_forward_out.gate_up_proj.bias" in renamed
    assert from_transformers_keys(renamed, prefix=prefix).keys() == full.keys()
    assert len(TRANSFORMERS_KEY_RENAMES) == 4


def test_full_size_shapes_match_transformers():
    cfg = AudioConfig()  # the published encoder: 24 blocks of 1024
    with torch.device("meta"):
        ours = ConformerEncoder(cfg)
        ref = Phi4MultimodalAudioModel(hf_config(cfg))
    ours_shapes = {k: tuple(v.shape) for k, v in to_transformers_keys(ours.state_dict()).items()}
    assert ours_shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours_shapes["relative_attention_bias_layer.bias_values.weight"] == (1000, 16)
    assert set(ours.state_dict()) == official_keys(24)


# ---- numerical equality with transformers ---------------------------------------------------------
@pytest.mark.parametrize("t", [203, 64, 9])
def test_single_clip_matches_transformers(pair, t):
    ref, ours = pair
    x = feats(1, t, 80, seed=t)
    with torch.no_grad():
        expected = ref(x, None)
        got, mask = ours(x)
    assert got.shape == expected.shape == (1, -(-t // 8), ours.config.hidden_size)
    assert mask.all() and mask.shape == (1, -(-t // 8))
    assert (got - expected).abs().max() <= TOL


def test_long_clip_windows_match_transformers(pair):
    """8000 frames -> 1000 after subsampling: two full 500-frame windows, as transformers splits them."""
    ref, ours = pair
    x = feats(1, 8000, 80, seed=1)
    with torch.no_grad():
        expected = ref(x, None)
        got, _ = ours(x)
    assert got.shape == (1, 1000, ours.config.hidden_size)
    assert (got - expected).abs().max() <= TOL


def test_long_clip_tail_window_is_encoded_on_its_own(pair):
    """1100 frames after subsampling: windows 500 + 500 + 100. The last window equals those 100
    frames encoded alone; transformers instead attends to the 400 zero frames it pads it with."""
    ref, ours = pair
    x = feats(1, 8800, 80, seed=2)
    with torch.no_grad():
        expected = windowed_reference(ref, x, 500)
        got, _ = ours(x)
        hf = ref(x, None)
    assert got.shape == expected.shape == (1, 1100, ours.config.hidden_size)
    assert (got - expected).abs().max() <= TOL
    assert (hf[:, :1000] - expected[:, :1000]).abs().max() <= TOL
    assert (hf[:, 1000:] - expected[:, 1000:]).abs().max() > 1e-3


def test_small_window_matches_reference_definition(pair):
    ref, _ = pair
    ours = ConformerEncoder(tiny_audio(max_seq_len=7)).eval()
    ours.load_state_dict(from_transformers_keys(ref.state_dict()))
    x = feats(1, 203, 80, seed=3)  # 26 frames -> windows 7, 7, 7, 5
    with torch.no_grad():
        got, _ = ours(x)
        expected = windowed_reference(ref, x, 7)
    assert (got - expected).abs().max() <= TOL


# ---- padded batches -------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [500, 7])
def test_padded_batch_rows_equal_solo_runs(pair, window):
    ref, _ = pair
    ours = ConformerEncoder(tiny_audio(max_seq_len=window)).eval()
    ours.load_state_dict(from_transformers_keys(ref.state_dict()))
    lengths = [203, 150, 61, 9]
    x = feats(len(lengths), max(lengths), 80, seed=4)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    x = x.masked_fill(~mask[..., None], 0.0)  # padding as the feature extractor writes it
    with torch.no_grad():
        batch, out_mask = ours(x, mask)
        for i, n in enumerate(lengths):
            solo, _ = ours(x[i: i + 1, :n])
            k = -(-n // 8)
            assert int(out_mask[i].sum()) == k and out_mask[i, :k].all()
            assert (batch[i, :k] - solo[0]).abs().max() <= TOL
            assert (batch[i, k:] == 0).all()
    assert torch.isfinite(batch).all()


def test_transformers_padded_batch_differs_from_solo_runs(pair):
    """The reference adds the boolean mask to the bias (+1 / +0) and lets padding leak through
    the subsampling convolutions, so its rows depend on the padding."""
    ref, ours = pair
    lengths = [203, 61]
    x = feats(2, 203, 80, seed=5)
    mask = torch.arange(203)[None, :] < torch.tensor(lengths)[:, None]
    x = x.masked_fill(~mask[..., None], 0.0)
    with torch.no_grad():
        hf_batch = ref(x, mask)
        hf_solo = ref(x[1:, :61], None)
        ours_batch, _ = ours(x, mask)
    k = -(-61 // 8)
    assert (hf_batch[1, :k] - hf_solo[0]).abs().max() > 1e-2
    assert (ours_batch[1, :k] - hf_solo[0]).abs().max() <= TOL  # a solo run is the reference's own number
    assert (hf_batch[0] - ours_batch[0]).abs().max() <= TOL  # the longest row has no padding


# ---- streaming chunk masks, training --------------------------------------------------------------
@pytest.mark.parametrize("length, chunk, left", [(26, 4, 1), (30, 3, 2), (9, 18, 18)])
def test_chunk_mask_is_transformers_mask(length, chunk, left):
    enc = ConformerEncoder(tiny_audio(chunk_size=chunk, left_chunk=left))
    bias = enc._attention_bias(length, torch.ones(1, length, dtype=torch.bool), torch.float32)
    expected = adaptive_enc_mask(length, list(range(0, length, chunk)), left_window=left)
    assert torch.equal(torch.isfinite(bias[0, 0]), expected)


def test_chunked_outputs_ignore_future_chunks(pair):
    ref, _ = pair
    enc = ConformerEncoder(tiny_audio(chunk_size=2, left_chunk=1)).eval()
    enc.load_state_dict(from_transformers_keys(ref.state_dict()))
    x = feats(1, 120, 80, seed=6)
    y = x.clone()
    y[:, 16:] += 5.0  # output frames 0..1 (chunk 0) see input frames 0..15 only
    with torch.no_grad():
        a, _ = enc(x)
        b, _ = enc(y)
    assert (a[:, :2] - b[:, :2]).abs().max() <= TOL
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-2


def test_gradients_and_checkpointing(pair):
    _, ours = pair
    enc = ConformerEncoder(tiny_audio()).train()
    enc.load_state_dict(ours.state_dict())
    x = feats(2, 40, 80, seed=7)
    mask = torch.tensor([[True] * 40, [True] * 25 + [False] * 15])
    out, _ = enc(x, mask)
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters()}
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    enc.zero_grad()
    enc.gradient_checkpointing = True
    out2, _ = enc(x, mask)
    out2.square().sum().backward()
    assert (out2 - out).abs().max() <= TOL
    assert all((p.grad - grads[n]).abs().max() <= 1e-4 for n, p in enc.named_parameters())
