"""The kernels behind the fast paths give the numbers of the plain computations they replace
(the paths themselves, switched on and off in a whole model, are in test_execution_plan.py):

- routed LoRA linear as one hand-written autograd node (adapters on contiguous token spans)
  == the same computation through autograd's generic ops, forward and every gradient, with dropout;
- a padded mixed batch trains exactly like its rows run one at a time without padding;
- generation's in-place KV cache == transformers' DynamicCache (identical tokens);
- the one-node SwiGLU gate and the conformer's channels-last first convolution == the plain ones;
- grouped-query, packed-row and length-grouped attention == plain SDPA.
"""
from __future__ import annotations

import pytest
import torch

from conftest import double_tiny
from molora.adapters.lora_fused import routed_linear


@pytest.mark.parametrize("bias", [False, True])
def test_fused_routed_linear_matches_autograd(bias):
    g = torch.Generator().manual_seed(0)
    n, d_in, d_out = 23, 16, 12
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(d_out, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    ads = [(slice(3, 11), 4, 2.0), (slice(11, 23), 5, 0.5)]
    ab = [(torch.randn(r, d_in, generator=g, dtype=torch.float64, requires_grad=True),
           torch.randn(d_out, r, generator=g, dtype=torch.float64, requires_grad=True)) for _, r, _ in ads]
    y = routed_linear(x, w, b, [(sp, a, bb, sc, 0.0) for (sp, _, sc), (a, bb) in zip(ads, ab)])
    ref = torch.nn.functional.linear(x, w, b)
    delta = torch.zeros_like(ref)
    for (sp, _, sc), (a, bb) in zip(ads, ab):
        delta = delta.index_put((torch.arange(sp.start, sp.stop),), x[sp] @ a.t() @ bb.t() * sc, accumulate=True)
    ref = ref + delta
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    up = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    leaves = [x, w, *([b] if bias else []), *[t for pair in ab for t in pair]]
    got = torch.autograd.grad(y, leaves, up)
    want = torch.autograd.grad(ref, leaves, up)
    for a_, b_ in zip(got, want):
        torch.testing.assert_close(a_, b_, rtol=0, atol=1e-10)


def _mixed(proc, synth_audio, drawn_image):
    def user(parts, answer):
        content = [{"type": "text", "text": p} if isinstance(p, str) else
                   {"type": "audio", "audio": p} if isinstance(p, tuple) else {"type": "image", "image": p}
                   for p in parts]
        return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]

    return [user(["a short story"], "once upon a time"),
            user([drawn_image(100, 80, 1), "what is drawn?"], "boxes"),
            user([(synth_audio(1.2, seed=1), 16000), "Transcribe."], "hello world"),
            user([drawn_image(90, 120, 2), (synth_audio(0.7, seed=2), 16000)], "four"),
            user(["hi"], "hello there, friend")]


def test_padded_mixed_batch_trains_like_solo_rows():
    from conftest import drawn_image, synth_audio

    model, proc = double_tiny(0)  # no dropout: the two runs must see the same function
    convs = _mixed(proc, synth_audio, drawn_image)

    def grads(batches):
        model.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
            loss = model(**batch, return_logits=False, loss_reduction="sum").loss
            if loss.requires_grad:  # a text-only row reaches no trainable weight
                loss.backward()
            total += float(loss.detach())
        return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    mixed = proc(convs, return_labels=True)
    assert mixed["attention_mask"].eq(0).any()  # the batch is padded
    solos = [proc([c], return_labels=True) for c in convs]
    # the same float32 log-mel in both runs: a batched STFT may round differently from one clip at a time
    # on other kernels (AVX2: 2e-6 apart; the front end's own tolerance is tests/test_audio_features.py's),
    # and this test is about the model, which must then agree to float64 rounding
    clips = iter(range(mixed["audio_input_features"].shape[0]))
    for solo in solos:
        if "audio_input_features" in solo:
            i, n = next(clips), solo["audio_input_features"].shape[1]
            solo["audio_input_features"] = mixed["audio_input_features"][i:i + 1, :n].clone()
    loss_mixed, g_mixed = grads([mixed])
    loss_solo, g_solo = grads(solos)
    assert loss_mixed == pytest.approx(loss_solo, rel=1e-10)
    assert g_mixed.keys() == g_solo.keys()
    assert any(".lora_A.speech" in n for n in g_mixed) and any(".lora_B.vision" in n for n in g_mixed)
    for n in g_mixed:
        torch.testing.assert_close(g_mixed[n], g_solo[n], rtol=1e-8, atol=1e-10, msg=n)


def test_fused_dropout_gradients_match_the_masked_formula():
    """With dropout the LoRA input is x * mask / (1 - p); recover the mask from the forward and
    check every gradient against autograd on that explicit formula."""
    torch.manual_seed(0)
    p = 0.3
    x = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 8, dtype=torch.float64)
    a = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)  # square, full rank: the mask is recoverable
    b = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    y = routed_linear(x, w, None, [(slice(5, 30), a, b, 1.5, p)])
    h = torch.linalg.solve(b.detach(), ((y - x @ w.t()).detach()[5:] / 1.5).t()).t()  # rows: x_d @ a.T
    xd = torch.linalg.solve(a.detach(), h.t()).t()
    mask = (xd.abs() > 1e-9).double()
    torch.testing.assert_close(xd, x.detach()[5:] * mask / (1 - p))
    up = torch.randn(30, 8, dtype=torch.float64)
    got = torch.autograd.grad(y, [x, a, b], up)
    ref = x @ w.t() + torch.nn.functional.pad((x[5:] * mask / (1 - p)) @ a.t() @ b.t() * 1.5, (0, 0, 5, 0))
    for g1, g2 in zip(got, torch.autograd.grad(ref, [x, a, b], up)):
        torch.testing.assert_close(g1, g2)




def _as_double(batch):
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def test_growing_kv_cache_generates_the_dynamic_cache_tokens(monkeypatch):
    from conftest import drawn_image, synth_audio
    from transformers import DynamicCache

    import molora.generation as generation
    from molora.kv_cache import GrowingCache

    model, proc = double_tiny(seed=3)
    model.eval()
    convs = [c[:1] for c in _mixed(proc, synth_audio, drawn_image)]
    batch = _as_double(proc(convs))
    kw = dict(max_new_tokens=12, eos_token_ids=[])
    fast = model.generate(**batch, **kw)
    monkeypatch.setattr(generation, "GrowingCache", lambda reserve: GrowingCache(reserve=0))  # grows by doubling
    doubling = model.generate(**batch, **kw)
    monkeypatch.setattr(generation, "GrowingCache", lambda reserve: DynamicCache())
    plain = model.generate(**batch, **kw)
    assert fast.shape == (len(convs), 12)
    assert torch.equal(fast, plain) and torch.equal(doubling, plain)


def test_swiglu_gate_matches_autograd():
    from molora.swiglu import _SiluGate

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 10, generator=g, dtype=torch.float64, requires_grad=True)
    gate, up = x.chunk(2, dim=-1)
    want = up * torch.nn.functional.silu(gate)
    got = _SiluGate.apply(x)
    assert torch.equal(got, want)
    up_grad = torch.randn(7, 5, generator=g, dtype=torch.float64)
    # the same kernels as autograd's: bit-identical
    assert torch.equal(torch.autograd.grad(got, x, up_grad)[0], torch.autograd.grad(want, x, up_grad)[0])
    assert torch.autograd.gradcheck(_SiluGate.apply, (x,))


def test_conformer_first_conv_channels_last_matches_conv2d():
    from molora.encoders.conformer import _first_conv_channels_last

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 16, 3, stride=2, padding=1).double()
    x = torch.randn(2, 1, 13, 10, dtype=torch.float64)
    got = _first_conv_channels_last(conv, x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, conv(x), rtol=1e-12, atol=1e-12)


def test_attention_kernels_agree():
    """Grouped-query SDPA on the shared K/V heads == SDPA on repeated heads; packed rows (per row,
    block-diagonal mask) == each row alone; length groups == one padded SDPA at the real positions."""
    from transformers.integrations.sdpa_attention import repeat_kv

    from molora.attention import LengthGroups, grouped_attention, packed_attention, padded_attention, padding_mask

    g = torch.Generator().manual_seed(0)
    lengths = [5, 9, 3]
    n = sum(lengths)
    q = torch.randn(1, 6, n, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, n, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, n, 8, generator=g, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 5, 14, 17])
    want = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[:, :, s:e], repeat_kv(k[:, :, s:e], 3), repeat_kv(v[:, :, s:e], 3), is_causal=True, scale=0.3)
        for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())], 2).transpose(1, 2)
    up = torch.randn(want.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(want, (q, k, v), up)
    for backend in ("rows", "block"):
        got = packed_attention(q, k, v, cu, lengths, backend, scale=0.3)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad(got, (q, k, v), up), grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # padded rows of very different lengths (right and left padding)
    for side in ("right", "left"):
        mask = torch.zeros(3, 40, dtype=torch.long)
        for r, m in enumerate([40, 8, 30]):
            mask[r, :m] = 1
        if side == "left":
            mask = mask.flip(-1)
        qp, kp, vp = (torch.randn(3, h, 40, 8, generator=g, dtype=torch.float64) for h in (6, 2, 2))
        full = padding_mask(mask, 40)
        plain = padded_attention(qp, kp, vp, full)
        groups = LengthGroups.plan(mask)
        assert groups is not None and len(groups.groups) >= 2
        grouped = grouped_attention(qp, kp, vp, full, groups)
        real = mask.bool()
        torch.testing.assert_close(grouped[real], plain[real], rtol=1e-12, atol=1e-12)
    left = LengthGroups.plan(torch.tensor([[0] * 60 + [1] * 40, [1] * 100, [0] * 55 + [1] * 45]))
    assert left is not None and [(x[0].tolist(), x[1], x[2]) for x in left.groups] == [([1], 0, 100),
                                                                                     ([0, 2], 55, 100)]
