"""The optimised paths give the same numbers as the plain ones they replace.

- routed LoRA linear as one hand-written autograd node (adapters on contiguous token spans)
  == the same computation through autograd's generic ops, forward and every gradient;
- a padded mixed batch (tokens regrouped by adapter, padding dropped) trains exactly like its
  rows run one at a time without padding (loss sum and every LoRA / projector gradient);
- the last decoder layer narrowed to the positions that are read (``logits_to_keep``, or the
  labelled positions with ``return_logits=False``) == the full forward (logits, loss, gradients);
- generation's in-place KV cache == transformers' DynamicCache (identical tokens);
- attention per length bucket (rows of very different lengths) == attention over the padded batch;
- the one-node SwiGLU gate, grouped-query SDPA on CPU and the conformer's channels-last first
  convolution == the plain computations;
- text-only rows of a frozen backbone run without autograd (``molora/frozen_rows.py``) == one pass
  for all rows (loss and every gradient).
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

    model, proc = _double_tiny(0)  # no dropout: the two runs must see the same function
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


def _double_tiny(seed=0):
    torch.manual_seed(seed)
    cfg = MoLoRAConfig.preset("tiny")
    model = MoLoRAModel(cfg).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    for p in model.audio_embed.audio_projection.parameters():
        p.requires_grad_(True)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model.train(), MoLoRAProcessor.from_config(cfg)


def _as_double(batch):
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def test_narrowed_last_layer_matches_full_forward():
    from conftest import drawn_image, synth_audio

    model, proc = _double_tiny()
    batch = _as_double(proc(_mixed(proc, synth_audio, drawn_image), return_labels=True))

    def run(return_logits):
        model.zero_grad(set_to_none=True)
        loss = model(**batch, return_logits=return_logits).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_loss, full_g = run(True)  # full logits: nothing narrowed
    lean_loss, lean_g = run(False)  # labelled positions only in the last layer
    torch.testing.assert_close(lean_loss, full_loss, rtol=1e-12, atol=0)
    assert lean_g.keys() == full_g.keys()
    for n in full_g:
        torch.testing.assert_close(lean_g[n], full_g[n], rtol=1e-9, atol=1e-12, msg=n)
    gen = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        full = model.eval()(**gen).logits[:, -1:]
        last = model(**gen, logits_to_keep=1).logits
    torch.testing.assert_close(last, full, rtol=1e-12, atol=1e-12)


def test_growing_kv_cache_generates_the_dynamic_cache_tokens(monkeypatch):
    from conftest import drawn_image, synth_audio
    from transformers import DynamicCache

    import molora.generation as generation
    from molora.kv_cache import GrowingCache

    model, proc = _double_tiny(seed=3)
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


def test_gqa_sdpa_matches_repeated_heads():
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import repeat_kv

    from molora.backbone import sdpa_gqa_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 6, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 2, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 2, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(9, 9, dtype=torch.bool).tril().expand(3, 1, 9, 9).clone()
    mask[0, :, :, :2] = False
    mask[0, :, :2, 0] = True  # every query sees a key
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    got, _ = sdpa_gqa_attention(module, q, k, v, mask, scaling=0.3)
    want = torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), attn_mask=mask,
                                                            scale=0.3).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    up = torch.randn(got.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), up), torch.autograd.grad(want, (q, k, v), up)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_conformer_first_conv_channels_last_matches_conv2d():
    from molora.encoders.conformer import _first_conv_channels_last

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 16, 3, stride=2, padding=1).double()
    x = torch.randn(2, 1, 13, 10, dtype=torch.float64)
    got = _first_conv_channels_last(conv, x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, conv(x), rtol=1e-12, atol=1e-12)


def test_length_grouped_attention_matches_padded_attention(monkeypatch):
    from conftest import drawn_image, synth_audio

    from molora.backbone import LengthGroups

    model, proc = _double_tiny(seed=5)
    batch = _as_double(proc(_mixed(proc, synth_audio, drawn_image), return_labels=True))
    plan = LengthGroups.plan(batch["attention_mask"])
    assert plan is not None and len(plan.groups) >= 2  # the batch mixes short and long rows
    # left padding (generation): the same buckets, windows at the right end
    left = LengthGroups.plan(torch.tensor([[0] * 60 + [1] * 40, [1] * 100, [0] * 55 + [1] * 45]))
    assert left is not None and [(g[0].tolist(), g[1], g[2]) for g in left.groups] == [([1], 0, 100),
                                                                                       ([0, 2], 55, 100)]

    def run():
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    grouped, g_grouped = run()
    monkeypatch.setattr(LengthGroups, "plan", classmethod(lambda cls, mask, min_saving=0.2: None))
    padded, g_padded = run()
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(grouped.logits[real], padded.logits[real], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grouped.loss, padded.loss, rtol=1e-12, atol=0)
    for n in g_padded:
        torch.testing.assert_close(g_grouped[n], g_padded[n], rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_training_forward_matches_padded(monkeypatch, side):
    """The padding-free training forward (molora/packing.py) gives the padded forward's loss and
    gradients, with right or left padding and a row that has no labelled token."""
    from conftest import drawn_image, synth_audio

    from molora.packing import PackedRows

    model, proc = _double_tiny(seed=7)
    model.split_frozen_rows = False  # one packed pass for all rows (the split is tested below)
    batch = _as_double(proc(_mixed(proc, synth_audio, drawn_image), return_labels=True))
    batch["labels"][1] = -100  # a row with nothing to learn still packs (and adds nothing)
    if side == "left":  # move every row's real tokens to the right end
        mask = batch["attention_mask"].bool()
        for k in ("input_ids", "attention_mask", "labels"):
            t = batch[k]
            fill = {"input_ids": proc.pad_token_id, "attention_mask": 0, "labels": -100}[k]
            out = torch.full_like(t, fill)
            for r in range(t.shape[0]):
                n = int(mask[r].sum())
                out[r, t.shape[1] - n:] = t[r][mask[r]]
            batch[k] = out
    plans = []
    real_plan = PackedRows.plan
    monkeypatch.setattr(PackedRows, "plan", classmethod(lambda cls, *a: plans.append(real_plan(*a)) or plans[-1]))

    def run():
        model.zero_grad(set_to_none=True)
        loss = model(**batch, return_logits=False, loss_reduction="sum").loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    packed_loss, packed_g = run()
    assert len(plans) == 1
    plan = plans[0]
    mask = batch["attention_mask"].bool()
    assert plan.n == int(mask.sum()) and plan.spans[-1][1] == plan.n
    assert bool((plan.token_adapter[1:] >= plan.token_adapter[:-1]).all())  # adapter spans
    assert torch.equal(batch["input_ids"].flatten()[plan.index].sort().values,
                       batch["input_ids"][mask].sort().values)
    monkeypatch.setattr(MoLoRAModel, "_packing", lambda self, *a: None)
    padded_loss, padded_g = run()
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-12, atol=0)
    assert packed_g.keys() == padded_g.keys()
    for n in padded_g:
        torch.testing.assert_close(packed_g[n], padded_g[n], rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("side, reduction", [("right", "mean"), ("left", "sum"), ("right", "sum")])
def test_frozen_text_rows_without_autograd_match_one_pass(monkeypatch, side, reduction):
    """Text-only rows (no adapter, no media) of a frozen backbone run under no_grad beside the other
    rows: the same loss and every gradient as one pass; nothing is split once the backbone trains."""
    from conftest import drawn_image, synth_audio

    model, proc = _double_tiny(seed=11)
    batch = _as_double(proc(_mixed(proc, synth_audio, drawn_image), return_labels=True, padding_side=side))
    splits = []
    real = MoLoRAModel._forward_split
    monkeypatch.setattr(MoLoRAModel, "_forward_split", lambda self, b, t, f, r, red: splits.append((f, r)) or
                        real(self, b, t, f, r, red))

    def run(split):
        model.split_frozen_rows = split
        model.zero_grad(set_to_none=True)
        loss = model(**batch, return_logits=False, loss_reduction=reduction).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    split_loss, split_g = run(True)
    assert splits == [([0, 4], [1, 2, 3])]  # the two text rows, then image / speech / image+speech
    one_loss, one_g = run(False)
    assert len(splits) == 1
    torch.testing.assert_close(split_loss, one_loss, rtol=1e-6, atol=0)  # the loss is fp32 (summation order)
    assert split_g.keys() == one_g.keys() and len(one_g) > 0
    for n in one_g:
        torch.testing.assert_close(split_g[n], one_g[n], rtol=1e-9, atol=1e-12, msg=n)
    # a backbone that trains: every row's loss has a gradient, nothing is split
    model.language_model.norm.weight.requires_grad_(True)
    run(True)
    assert len(splits) == 1 and model.language_model.norm.weight.grad is not None
    model.language_model.norm.weight.requires_grad_(False)
    with torch.no_grad():  # evaluation: no split either
        model.split_frozen_rows = True
        model(**batch, return_logits=False)
    assert len(splits) == 1
