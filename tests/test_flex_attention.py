"""Packed attention through torch's FlexAttention (``packed_attention`` ``flex`` / ``flex_eager``,
molora/attention.py), chosen by the execution plan (molora/plan.py).

On the CPU torch runs FlexAttention forward only: ``flex_eager`` (no compiling, any float dtype) is
checked in float64 against the ``rows`` kernel and the plain path (``FastPaths.off()``); ``flex``
(compiled by inductor into a C++ kernel, float32 / half only on the CPU) in float32, within a
bound derived from float32's unit roundoff and the summation lengths. Gradients through
FlexAttention need CUDA: the GPU check (benchmarks/gpu_check.py) compares them with ``rows`` there;
here the plan refuses a FlexAttention kernel on the CPU when autograd is on.
"""
from __future__ import annotations

import pytest
import torch

from conftest import double_tiny, drawn_image, synth_audio
from molora.attention import document_block_mask, packed_attention
from molora.packing import pack_batch
from molora.plan import BatchFacts, FastPaths, choose_plan, packed_kernel

# rows crossing 128-token tiles (full tiles inside the long ones), a 1-token row, a row on a tile edge
LENGTHS = [150, 7, 300, 1, 40, 128]


def _cu(lengths):
    return torch.tensor([0, *lengths]).cumsum(0)


def _qkv(lengths, dtype, heads=6, kv_heads=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    return tuple(torch.randn(1, h, n, d, generator=g, dtype=dtype) for h in (heads, kv_heads, kv_heads))


@pytest.mark.parametrize("lengths", [[5, 9, 3], LENGTHS, [128, 128, 256], [700], [128]], ids=str)
@pytest.mark.parametrize("tile", [4, 16, 128])
def test_document_block_mask_is_torchs_mask_of_the_rows(lengths, tile):
    """The tiles built from ``cu_seqlens`` are those ``create_block_mask`` finds by evaluating the
    mask (same row, key not after query) at every pair: which tiles are skipped, partial or full,
    in the same order, and the same mask inside them."""
    from torch.nn.attention.flex_attention import create_block_mask

    n = sum(lengths)
    span = max(-(-n // tile), 2) * tile  # whole tiles, two at least; the padding is a row of its own
    row = torch.repeat_interleave(torch.arange(len(lengths) + 1), torch.tensor([*lengths, span - n]))
    want = create_block_mask(lambda b, h, q, k: (row[q] == row[k]) & (k <= q), None, None, span, span,
                             device="cpu", BLOCK_SIZE=tile)
    got = document_block_mask(_cu(lengths), n, tile)
    assert got.seq_lengths == (span, span)
    for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    for count, idx in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        for i, c in enumerate(getattr(want, count)[0, 0].tolist()):
            assert torch.equal(getattr(got, idx)[0, 0, i, :c], getattr(want, idx)[0, 0, i, :c]), (idx, i)
    assert torch.equal(got.to_dense(), want.to_dense())
    if len(lengths) == 1 and n > 2 * tile:
        assert int(got.full_kv_num_blocks.sum()) > 0  # a long row's tiles below the diagonal are full


@pytest.mark.parametrize("kv_heads", [2, 6], ids=["gqa", "mha"])
def test_flex_eager_kernel_is_the_rows_kernel_in_float64(kv_heads):
    q, k, v = _qkv(LENGTHS, torch.float64, kv_heads=kv_heads)
    want = packed_attention(q, k, v, _cu(LENGTHS), LENGTHS, "rows", scale=0.3)
    got = packed_attention(q, k, v, _cu(LENGTHS), LENGTHS, "flex_eager", scale=0.3)
    assert got.shape == want.shape == (1, sum(LENGTHS), 6, 8)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _float32_bound(lengths, q, k, v, scale) -> float:
    """Worst-case distance between two float32 computations of one softmax average that differ in
    summation order only (u = 2^-24 each rounding): a score ``scale * q.k`` of ``d`` terms is
    within ``d * u * |s|max`` of exact (|s|max: the largest score magnitude), which exp turns into
    the same relative error of each weight; the normaliser and the weighted sum over a row's ``L``
    keys add ``L * u``; the weights sum to 1 over values bounded by ``max|v|``. Twice that: each
    kernel's own error."""
    u = torch.finfo(torch.float32).eps / 2
    s_max = float((scale * q.double() @ k.double().repeat_interleave(q.shape[1] // k.shape[1], 1).transpose(-1, -2))
                  .abs().max())
    return 2 * (q.shape[-1] * s_max + max(lengths)) * u * float(v.abs().max())


@pytest.mark.slow  # inductor compiles the C++ kernel once (10-25 s on two cores)
def test_compiled_flex_kernel_matches_rows_in_float32():
    """What ``auto`` runs on CUDA, compiled here by inductor for the CPU (a C++ compiler on PATH)."""
    for lengths in (LENGTHS, [5, 9, 3], [128, 128, 256]):  # lengths of every size class: one compiled kernel
        q, k, v = _qkv(lengths, torch.float32)
        want = packed_attention(q.double(), k.double(), v.double(), _cu(lengths), lengths, "rows", scale=0.3)
        rows = packed_attention(q, k, v, _cu(lengths), lengths, "rows", scale=0.3)
        got = packed_attention(q, k, v, _cu(lengths), lengths, "flex", scale=0.3)
        bound = _float32_bound(lengths, q, k, v, 0.3)
        assert float((rows.double() - want).abs().max()) <= bound  # the bound holds for the rows kernel too
        torch.testing.assert_close(got.double(), want, rtol=0, atol=bound)
        torch.testing.assert_close(got, rows, rtol=0, atol=bound)


def _packed_batch(model, proc):
    """A packed batch (the collator's ``pack_batch``) of text, image and speech rows in adapter order."""
    def user(parts, answer):
        content = [{"type": "text", "text": p} if isinstance(p, str) else
                   {"type": "audio", "audio": p} if isinstance(p, tuple) else {"type": "image", "image": p}
                   for p in parts]
        return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]

    convs = [user(["a short story about the sea, told slowly " * 4], "once upon a time"),
             user([drawn_image(100, 80, 1), "what is drawn?"], "boxes"),
             user([(synth_audio(1.2, seed=1), 16000), "Transcribe."], "hello world"),
             user(["hi"], "hello there, friend")]
    convs.sort(key=lambda c: model.router.adapter_index(model.row_types(proc([c])["input_ids"])).item())
    padded = proc(convs, return_labels=True)
    padded = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in padded.items()}
    return padded, pack_batch(padded)


def test_model_logits_with_flex_eager_are_the_plain_logits():
    """Forward in float64 (no autograd: torch's FlexAttention has no CPU backward): the packed batch
    through ``flex_eager`` gives the plain padded path's logits at the real positions, and the
    ``rows`` kernel's, and the plan says it ran ``flex_eager``."""
    model, proc = double_tiny(seed=3)
    model.eval()
    padded, packed = _packed_batch(model, proc)
    inputs = {k: v for k, v in packed.items() if k != "labels"}
    assert packed["input_ids"].shape[1] > 128  # the rows span more than one tile
    with torch.no_grad():
        model.fast_paths = FastPaths.off()
        plain = model(**{k: v for k, v in padded.items() if k != "labels"}).logits[padded["attention_mask"].bool()]
        model.fast_paths = FastPaths.off().replace(packed_attention="rows")
        rows = model(**inputs).logits[0]
        model.fast_paths = FastPaths.off().replace(packed_attention="flex_eager")
        out = model(**inputs)
        loss = model(**packed, return_logits=False).loss
        model.fast_paths = FastPaths.off()
        plain_loss = model(**padded, return_logits=False).loss
    assert out.plan.packed and out.plan.packed_backend == "flex_eager"
    torch.testing.assert_close(out.logits[0], plain, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.logits[0], rows, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-10, atol=0)


def test_plan_picks_flex_on_cuda_only_where_it_runs(monkeypatch):
    """``auto``: FlashAttention where installed, else compiled FlexAttention on CUDA where torch can
    compile it (and attention has no dropout, and not in float64), else ``rows``: the CPU keeps
    ``rows``. Decided from the device and dtype the plan is given; nothing runs on CUDA here."""
    import molora.plan as plan_mod

    facts = BatchFacts(packed_input=True, padded=False, training_loss=True, reads_subset=True, prefill=True,
                       seq_len=300, grad=True, frozen_rows_possible=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for dtype in (torch.float32, torch.bfloat16):
        assert choose_plan(FastPaths(), facts, cpu, dtype).packed_backend == "rows"
    monkeypatch.setattr(plan_mod, "flex_available", lambda device: device.type == "cuda")
    assert choose_plan(FastPaths(), facts, cpu, torch.bfloat16).packed_backend == "rows"
    assert choose_plan(FastPaths(), facts, cuda, torch.bfloat16).packed_backend == "flex"
    assert choose_plan(FastPaths(), facts, cuda, torch.float32).packed_backend == "flex"
    assert choose_plan(FastPaths(), facts, cuda, torch.float64).packed_backend == "rows"
    assert choose_plan(FastPaths(), facts, cuda, torch.bfloat16, attention_dropout=0.1).packed_backend == "rows"
    monkeypatch.setattr(plan_mod, "flash_available", lambda device, dtype: True)
    assert choose_plan(FastPaths(), facts, cuda, torch.bfloat16).packed_backend == "flash"
    monkeypatch.setattr(plan_mod, "flex_available", lambda device: False)  # an older torch, or no Triton
    monkeypatch.setattr(plan_mod, "flash_available", lambda device, dtype: False)
    assert choose_plan(FastPaths(), facts, cuda, torch.bfloat16).packed_backend == "rows"


def test_plan_refuses_flex_where_it_cannot_run():
    """Asked for by name: refused with autograd on the CPU (no FlexAttention backward there) and
    with attention dropout (FlexAttention has none); accepted without autograd, and never refused
    for a call that does not run packed rows."""
    no_grad = dict(packed_input=True, padded=False, training_loss=False, reads_subset=False, prefill=True,
                   seq_len=300, grad=False, frozen_rows_possible=False)
    cpu = torch.device("cpu")
    for name in ("flex", "flex_eager"):
        assert choose_plan(FastPaths(packed_attention=name), BatchFacts(**no_grad), cpu,
                           torch.float32).packed_backend == name
        with pytest.raises(ValueError, match="no backward on cpu"):
            choose_plan(FastPaths(packed_attention=name), BatchFacts(**{**no_grad, "grad": True}), cpu, torch.float32)
        with pytest.raises(ValueError, match="no attention dropout"):
            packed_kernel(name, torch.device("cuda"), torch.bfloat16, grad=True, attention_dropout=0.1)
        padded = BatchFacts(**{**no_grad, "packed_input": False, "grad": True})  # inference, not packed
        assert not choose_plan(FastPaths(packed_attention=name), padded, cpu, torch.float32).packed


def test_training_step_with_flex_on_the_cpu_is_refused_by_the_plan():
    model, proc = double_tiny(seed=3)
    _, packed = _packed_batch(model, proc)
    model.fast_paths = FastPaths(packed_attention="flex")
    with pytest.raises(ValueError, match="packed_attention='flex'"):
        model(**packed, return_logits=False)
