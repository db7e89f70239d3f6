"""The optimised paths give the same numbers as the plain ones they replace.

- routed LoRA linear as one hand-written autograd node (adapters on contiguous token spans)
  == the same computation through autograd's generic ops, forward and every gradient;
- a padded mixed batch (tokens regrouped by adapter, padding dropped) trains exactly like its
  rows run one at a time without padding (loss sum and every LoRA / projector gradient).
"""
from __future__ import annotations

import pytest
import torch

from molora import MoLoRAConfig, MoLoRAModel, MoLoRAProcessor
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

    torch.manual_seed(0)
    cfg = MoLoRAConfig.preset("tiny")
    model = MoLoRAModel(cfg).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    for p in model.audio_embed.audio_projection.parameters():
        p.requires_grad_(True)
    model.train()
    for m in model.modules():  # no dropout: the two runs must see the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    proc = MoLoRAProcessor.from_config(cfg)
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

    loss_mixed, g_mixed = grads([proc(convs, return_labels=True)])
    assert proc(convs, return_labels=True)["attention_mask"].eq(0).any()  # the batch is padded
    loss_solo, g_solo = grads([proc([c], return_labels=True) for c in convs])
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
