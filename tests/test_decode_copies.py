"""Greedy decoding copies nothing big per step: the logits of the kept position come from one 2-D
matmul that reads the tied [V, H] embedding in place (a batched matmul on a strided [B, 1, H] slice
copied the transposed embedding at every step, 4.4x slower than transformers in bf16), and no other
weight-sized tensor is copied. Checked on the profiler's op list, not on timings."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from conftest import tiny_config
from molora import MoLoRAModel

VOCAB = 8192  # the embedding is the largest tensor by far: any copy of it shows in the op shapes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_reads_the_embedding_in_place(dtype):
    torch.manual_seed(0)
    model = MoLoRAModel(tiny_config().replace(backbone={"vocab_size": VOCAB})).to(dtype).eval()
    ids = torch.randint(0, 255, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    with torch.no_grad(), profile(record_shapes=True) as prof:
        model.generate(ids, mask, max_new_tokens=4, eos_token_ids=[])
    events = prof.key_averages(group_by_input_shape=True)
    names = {e.key for e in events}
    assert "aten::mm" in names or "aten::addmm" in names
    assert "aten::bmm" not in names
    big = [VOCAB, tiny_config().backbone.hidden_size]
    copies = [(e.key, e.input_shapes) for e in events
              if e.key in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::cat")
              and any(s in (big, big[::-1]) for s in e.input_shapes)]
    assert not copies


def test_lm_logits_on_strided_rows_equals_linear():
    torch.manual_seed(0)
    model = MoLoRAModel(tiny_config()).eval()
    hidden = torch.randn(3, 7, model.config.backbone.hidden_size)
    kept = hidden[:, -1:]  # strided [B, 1, H]
    assert not kept.is_contiguous()
    expected = F.linear(kept.contiguous(), model.language_model.embed_tokens.weight)
    got = model.lm_logits(kept)
    assert got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_generate_runs_one_forward_per_token():
    """n new tokens need the prefill and n - 1 decode steps, as transformers' generate runs."""
    torch.manual_seed(0)
    model = MoLoRAModel(tiny_config()).eval()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    out = model.generate(torch.randint(0, 255, (2, 9)), max_new_tokens=5, eos_token_ids=[])
    assert out.shape == (2, 5) and len(calls) == 5
