"""The execution plan (molora/plan.py): every fast path behind its switch gives the plain path's
numbers, alone and in combination, forward and gradients, in float64 end to end.

The plain path is ``FastPaths.off()``: padded layout, every token through every linear, one pass
for all rows, the generic LoRA computation, the full last layer. Each test also checks that the
plan really took the path it tests (``MoLoRAOutput.plan``), so a switch that stopped doing
anything fails here.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import double_tiny, drawn_image, synth_audio
from molora.packing import pack_batch
from molora.plan import BatchFacts, FastPaths, choose_plan

# (switch name, value that turns it on) for the paths of a training step
TRAIN_PATHS = [("pack", True), ("packed_attention", "block"), ("drop_padding", True), ("narrow", True),
               ("split_frozen_rows", True), ("fused_lora", True)]
LOSS_RTOL, GRAD_RTOL, GRAD_ATOL = 1e-10, 1e-9, 1e-12  # float64: summation orders only




def _conversations(with_answers=True):
    def user(parts, answer):
        content = [{"type": "text", "text": p} if isinstance(p, str) else
                   {"type": "audio", "audio": p} if isinstance(p, tuple) else {"type": "image", "image": p}
                   for p in parts]
        conv = [{"role": "user", "content": content}]
        return conv + [{"role": "assistant", "content": answer}] if with_answers else conv

    return [user(["a short story about the sea, told slowly"], "once upon a time"),
            user([drawn_image(100, 80, 1), "what is drawn?"], "boxes"),
            user([(synth_audio(1.2, seed=1), 16000), "Transcribe."], "hello world"),
            user([drawn_image(90, 120, 2), (synth_audio(0.7, seed=2), 16000)], "four"),
            user(["hi"], "hello there, friend")]


def _double(batch):
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def _step(model, batch, switches, **kw):
    model.fast_paths = switches
    model.zero_grad(set_to_none=True)
    out = model(**batch, **kw)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _assert_same(a, b):
    (out_a, g_a), (out_b, g_b) = a, b
    torch.testing.assert_close(out_a.loss.detach(), out_b.loss.detach(), rtol=LOSS_RTOL, atol=0)
    assert g_a.keys() == g_b.keys() and len(g_a) > 0
    for n in g_a:
        torch.testing.assert_close(g_a[n], g_b[n], rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=n)


def _switches(names):
    return FastPaths.off().replace(**{n: v for n, v in TRAIN_PATHS if n in names})


def _took(plan, names):
    """The plan fields each switch shows up in, for this training batch."""
    took = {"pack": plan.pack, "packed_attention": plan.packed_backend == "block" if plan.packed else True,
            "drop_padding": plan.drop_padding or plan.packed, "narrow": plan.narrow,
            "split_frozen_rows": plan.split_frozen_rows, "fused_lora": plan.fused_lora}
    return all(took[n] for n in names)


@pytest.fixture(scope="module")
def training():
    model, proc = double_tiny(seed=7)
    batch = _double(proc(_conversations(), return_labels=True))
    assert batch["attention_mask"].eq(0).any()  # the batch is padded
    batch["labels"][1] = -100  # a row with nothing to learn still runs (and adds nothing)
    plain = _step(model, batch, FastPaths.off(), return_logits=False, loss_reduction="sum")
    return model, proc, batch, plain


@pytest.mark.parametrize("names", [(n,) for n, _ in TRAIN_PATHS] + [tuple(n for n, _ in TRAIN_PATHS)],
                         ids=lambda t: "+".join(t) if len(t) < 6 else "all")
def test_each_training_path_alone_and_all_together(training, names):
    model, _, batch, plain = training
    if names == ("packed_attention",):
        names = ("pack", "packed_attention")  # the kernel of packed rows needs packing
    fast = _step(model, batch, _switches(names), return_logits=False, loss_reduction="sum")
    plan = fast[0].plan if fast[0].plan is not None else None
    assert plan is not None and _took(plan, names), (names, plan)
    _assert_same(fast, plain)


@pytest.mark.parametrize("pair", list(itertools.combinations([n for n, _ in TRAIN_PATHS if n != "packed_attention"],
                                                             2)), ids=lambda t: "+".join(t))
def test_training_paths_in_pairs(training, pair):
    model, _, batch, plain = training
    _assert_same(_step(model, batch, _switches(pair), return_logits=False, loss_reduction="sum"), plain)


@pytest.mark.parametrize("side, reduction", [("right", "mean"), ("left", "sum")])
def test_padding_side_and_mean_reduction(side, reduction):
    model, proc = double_tiny(seed=11)
    batch = _double(proc(_conversations(), return_labels=True, padding_side=side))
    plain = _step(model, batch, FastPaths.off(), return_logits=False, loss_reduction=reduction)
    fast = _step(model, batch, FastPaths(), return_logits=False, loss_reduction=reduction)
    assert fast[0].plan.pack and fast[0].plan.split_frozen_rows
    _assert_same(fast, plain)
    # the full-logits loss (no narrowing, no packing: logits are returned for every position)
    full = _step(model, batch, FastPaths(), loss_reduction=reduction)
    assert not full[0].plan.narrow and not full[0].plan.pack
    _assert_same(full, plain)


@pytest.mark.parametrize("backend", ["rows", "block"])
@pytest.mark.parametrize("split", [False, True])
def test_collator_packed_batch_trains_like_the_padded_one(backend, split):
    """A batch packed before the forward (``pack_batch``: what the trainer's collator sends) gives
    the padded batch's loss and gradients, with each packed-attention kernel; rows in adapter
    order (text, vision, speech) so each adapter owns a span."""
    model, proc = double_tiny(seed=3)
    convs = _conversations()
    order = sorted(range(len(convs)), key=lambda i: model.router.adapter_index(
        model.row_types(proc([convs[i]])["input_ids"])).item())
    convs = [convs[i] for i in order]
    padded = _double(proc(convs, return_labels=True))
    packed = pack_batch(padded)
    assert packed["input_ids"].shape == (1, int(padded["attention_mask"].sum()))
    plain = _step(model, padded, FastPaths.off(), return_logits=False, loss_reduction="sum")
    switches = FastPaths.off().replace(packed_attention=backend, split_frozen_rows=split, fused_lora=True)
    fast = _step(model, packed, switches, return_logits=False, loss_reduction="sum")
    assert fast[0].plan.packed and fast[0].plan.packed_backend == backend and \
        fast[0].plan.split_frozen_rows == split
    _assert_same(fast, plain)
    # and the packed batch's full logits are the padded batch's logits at the real positions
    model.fast_paths = FastPaths()
    with torch.no_grad():
        logits_packed = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
        logits_padded = model(**{k: v for k, v in padded.items() if k != "labels"}).logits
    torch.testing.assert_close(logits_packed, logits_padded[padded["attention_mask"].bool()], rtol=1e-10,
                               atol=1e-10)


INFERENCE_PATHS = [("drop_padding", True), ("narrow", True), ("length_groups", True), ("merged_inference", True),
                   ("fused_lora", True)]


@pytest.mark.parametrize("names", [(n,) for n, _ in INFERENCE_PATHS] + [tuple(n for n, _ in INFERENCE_PATHS)],
                         ids=lambda t: "+".join(t) if len(t) < 5 else "all")
def test_each_inference_path_gives_the_plain_logits(names):
    """Generation's prefill (left padding, the last position's logits) and a single-adapter batch."""
    model, proc = double_tiny(seed=5)
    model.eval()
    mixed = _double(proc(_conversations(with_answers=False)))
    speech = _double(proc([_conversations(with_answers=False)[2]] * 2))  # one adapter: merging applies
    switches = FastPaths.off().replace(**{n: v for n, v in INFERENCE_PATHS if n in names})
    for batch in (mixed, speech):
        with torch.no_grad():
            model.fast_paths = FastPaths.off()
            plain = model(**batch).logits[:, -1:]
            model.fast_paths = switches
            out = model(**batch, logits_to_keep=1)
        torch.testing.assert_close(out.logits, plain, rtol=1e-10, atol=1e-10)
        if "narrow" in names:
            assert out.plan.narrow
    assert out.plan.merged == ("merged_inference" in names)
    if "length_groups" in names:
        model.fast_paths = switches
        assert model(**mixed, logits_to_keep=1).plan.attention == "length_groups"


def test_generation_is_the_same_on_every_plan():
    model, proc = double_tiny(seed=13)
    model.eval()
    batch = _double(proc(_conversations(with_answers=False)))
    model.fast_paths = FastPaths.off()
    plain = model.generate(**batch, max_new_tokens=10, eos_token_ids=[])
    model.fast_paths = FastPaths(merged_inference=True)
    assert torch.equal(model.generate(**batch, max_new_tokens=10, eos_token_ids=[]), plain)


def test_fused_lora_under_autocast_matches_the_generic_path():
    """bf16 autocast (how training runs on a GPU) takes the fused LoRA node too. Its result is as
    close to the float32 computation as autocast's generic path is: both round activations to bf16
    (8 bits), in different places, so neither is closer than bf16 allows; the bound is twice the
    generic path's own distance from float32, over all gradients together."""
    model, proc = double_tiny(seed=17)
    model.float()
    batch = proc(_conversations(), return_labels=True)
    exact = _step(model, batch, FastPaths(fused_lora=False), return_logits=False, loss_reduction="sum")
    out = {}
    for fused in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out[fused] = _step(model, batch, FastPaths(fused_lora=fused), return_logits=False, loss_reduction="sum")
    assert out[True][0].plan.fused_lora

    def distance(run):
        loss = abs(run[0].loss.item() - exact[0].loss.item())
        grads = sum(float((run[1][n] - g).square().sum()) for n, g in exact[1].items()) ** 0.5
        return loss, grads

    (loss_gen, grad_gen), (loss_fused, grad_fused) = distance(out[False]), distance(out[True])
    size = sum(float(g.square().sum()) for g in exact[1].values()) ** 0.5
    assert 0 < grad_gen <= 2 ** -3 * size  # autocast really rounds, and only to bf16's level
    assert grad_fused <= 2 * grad_gen
    assert loss_fused <= 2 * loss_gen + 2 ** -8 * abs(exact[0].loss.item())


def test_plan_choice():
    facts = dict(packed_input=False, padded=True, training_loss=True, reads_subset=True, prefill=True, seq_len=64,
                 grad=True, frozen_rows_possible=True)
    cpu = torch.device("cpu")
    plan = choose_plan(FastPaths(), BatchFacts(**facts), cpu, torch.float32)
    assert (plan.pack, plan.packed, plan.attention, plan.packed_backend) == (True, True, "packed", "rows")
    assert plan.narrow and plan.split_frozen_rows and not plan.drop_padding  # packed: no padding to drop
    assert not choose_plan(FastPaths(), BatchFacts(**facts), cpu, torch.float32, touch_all=True).split_frozen_rows
    infer = BatchFacts(**{**facts, "training_loss": False, "grad": False, "frozen_rows_possible": False})
    plan = choose_plan(FastPaths(merged_inference=True), infer, cpu, torch.float32)
    assert (plan.pack, plan.attention, plan.drop_padding, plan.merged) == (False, "length_groups", True, True)
    short = BatchFacts(**{**facts, "training_loss": False, "seq_len": 16})
    assert choose_plan(FastPaths(), short, cpu, torch.float32).attention == "padded"
    off = choose_plan(FastPaths.off(), BatchFacts(**facts), cpu, torch.float32)
    assert off.attention == "padded" and not any(
        (off.pack, off.packed, off.drop_padding, off.narrow, off.split_frozen_rows, off.fused_lora, off.merged))
    # flash only where it can run: never on the CPU
    assert choose_plan(FastPaths(packed_attention="auto"), BatchFacts(**facts), cpu, torch.bfloat16
                       ).packed_backend == "rows"
    with pytest.raises(TypeError, match="unknown fast path"):
        FastPaths().replace(packing=True)
    with pytest.raises(ValueError, match="packed_attention"):
        choose_plan(FastPaths(packed_attention="xformers"), BatchFacts(**facts), cpu, torch.float32)


def test_forward_refuses_unknown_keywords():
    model, proc = double_tiny()
    batch = proc(_conversations(with_answers=False)[:1])
    with pytest.raises(TypeError):
        model(**batch, atention_mask=batch["attention_mask"])


def test_touch_all_joins_every_trainable_tensor_with_zero():
    """Sharded training (``model.touch_all``): a batch without speech gives every trainable tensor a
    gradient (zero for the encoders, projectors and adapters it did not use) and the same loss and
    gradients as without; the plan turns the frozen-row split off."""
    model, proc = double_tiny(seed=19)
    batch = _double(proc(_conversations()[:2], return_labels=True))  # a text row and an image row
    plain = _step(model, batch, FastPaths(), return_logits=False, loss_reduction="sum")
    model.touch_all = True
    joined = _step(model, batch, FastPaths(), return_logits=False, loss_reduction="sum")
    assert joined[0].plan.touch_all and not joined[0].plan.split_frozen_rows
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(joined[1]) == trainable and set(plain[1]) < trainable
    torch.testing.assert_close(joined[0].loss.detach(), plain[0].loss.detach(), rtol=LOSS_RTOL, atol=0)
    for n, g in joined[1].items():
        torch.testing.assert_close(g, plain[1].get(n, torch.zeros_like(g)), rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=n)
