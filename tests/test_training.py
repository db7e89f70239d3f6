"""Stage recipes end to end on CPU with the tiny preset and data the tests write."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from datafactory import corpus, write_manifest
from molora import MoLoRAConfig, MoLoRAModel
from molora.stages.freeze import component_of, unused_parameters
from molora.stages.recipe import load_recipe
from molora.stages.trainer import build_model, train

ROOT = Path(__file__).resolve().parents[1]
STAGE_DATA = {"tiny-vision": "vqa", "tiny-speech": "asr", "tiny-joint": "joint", "tiny-sft": "mixed",
              "tiny-dpo": "preference"}


# N processes and one take the same steps bit for bit: each process computes its micro-batch exactly as
# the one process computes the same micro-batch (same rows, same shapes, same execution plan, one thread:
# the same kernels), gradients meet as g0 + g1 either way (the loss scaling by the process count and the
# averaging are powers of two), and the clipping norm is summed in float64 and rounded once
# (stages/trainer.py clip_gradients). MKL_CBWR=AUTO,STRICT makes MKL's results independent of memory
# alignment (FSDP2 gathers parameters into buffers of its own).
EXACT_ENV = {"OMP_NUM_THREADS": "1", "MKL_CBWR": "AUTO,STRICT"}


def metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STAGE_DATA))
def test_stage_recipe_learns_and_respects_its_freeze_plan(name, tmp_path):
    data = corpus(tmp_path / "data", STAGE_DATA[name])
    recipe = load_recipe(name, {"data.train": str(data), "max_steps": 50, "seed": 1})
    built, _ = build_model(recipe.model, recipe.seed)
    before = {k: v.detach().clone() for k, v in built.state_dict().items()}
    params = {k for k, _ in built.named_parameters()}  # buffers (e.g. CMVN statistics) never train
    summary = train(recipe, tmp_path / "out", progress=False)
    rows = metrics(tmp_path / "out")
    assert len(rows) == 50 and summary["skipped"] == []
    after = MoLoRAModel.from_pretrained(str(tmp_path / "out" / "final")).state_dict()
    plan = {c for s in recipe.substeps for c in s.train}
    unused = unused_parameters(MoLoRAModel.from_pretrained(str(tmp_path / "out" / "final")))
    for k, v in before.items():
        inside = k in params and component_of(k) in plan and k not in unused
        if inside:
            assert not torch.equal(v, after[k]), f"{k} is in the plan but did not change"
        else:
            assert torch.equal(v, after[k]), f"{k} is outside the plan but changed"
    if name == "tiny-dpo":
        margins = [r["reward_margin"] for r in rows]
        assert margins[0] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
        assert sum(margins[-5:]) / 5 > 0.5  # the reward margin rises
        assert rows[-1]["reward_accuracy"] >= 0.75 and rows[0]["reward_accuracy"] == 0.0
    else:
        assert rows[-1]["loss"] <= 0.5 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["loss"])
    # final output: loadable model + PEFT folders beside it
    assert (tmp_path / "out" / "final" / "vision-lora" / "adapter_config.json").exists()


def _run_cli(args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "molora.cli", "train", *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    data = corpus(tmp_path / "data", "mixed")
    common = ["--recipe", "tiny-sft", f"data.train={data}", "max_steps=24", "save_every=4", "seed=3",
              "training.micro_batch_size=4", "training.spec_augment={freq_mask_param: 8, time_mask_param: 5}"]
    full = _run_cli([*common, "--output-dir", str(tmp_path / "full")])
    assert full.wait(timeout=600) == 0, full.stdout.read()
    from molora.stages.checkpointing import KILL_AFTER_ENV

    victim = _run_cli([*common, "--output-dir", str(tmp_path / "killed")], env={KILL_AFTER_ENV: "12"})
    victim.wait(timeout=600)
    assert victim.returncode == -signal.SIGKILL, victim.stdout.read()
    steps = [r["step"] for r in metrics(tmp_path / "killed")]
    assert steps == list(range(1, 13)), steps  # killed right after the step-12 checkpoint, nothing later
    assert not (tmp_path / "killed" / "final").exists()
    resumed = _run_cli([*common, "--output-dir", str(tmp_path / "killed"), "--resume"])
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = metrics(tmp_path / "full"), metrics(tmp_path / "killed")
    assert [r["step"] for r in rb] == list(range(1, 25))  # no step lost or logged twice
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """Two processes (torch DDP: stages/grad_sync.py) take the steps one process takes, bit for bit,
    and the steps the hand-written average (training.grad_sync=manual, the oracle) takes; ``final/``
    and the checkpoints keep the model's own names (DDP wraps a module around the model)."""
    data = corpus(tmp_path / "data", "mixed")
    # SpecAugment on: each clip's masks follow the row, not the process that collates it
    common = ["--recipe", "tiny-sft", f"data.train={data}", "max_steps=6", "seed=2", "--cpu",
              "training.spec_augment={freq_mask_param: 8, time_mask_param: 5}"]
    threads = EXACT_ENV
    one = _run_cli([*common, "training.micro_batch_size=4", "training.grad_accum=2",
                    "--output-dir", str(tmp_path / "one")], env=threads)
    assert one.wait(timeout=600) == 0, one.stdout.read()
    for sync in ("ddp", "manual"):
        two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                              "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                              "-m", "molora.cli", "train", *common, "training.micro_batch_size=4", "save_every=3",
                              f"training.grad_sync={sync}", "--output-dir", str(tmp_path / sync)], cwd=ROOT,
                             capture_output=True, text=True, timeout=600, env={**os.environ, **threads})
        assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    for sync in ("ddp", "manual"):
        b = load_file(str(tmp_path / sync / "final" / "model.safetensors"))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), sync  # see EXACT_ENV
    assert [(r["loss"], r["grad_norm"]) for r in metrics(tmp_path / "ddp")] == \
        [(r["loss"], r["grad_norm"]) for r in metrics(tmp_path / "manual")]
    trainable = load_file(str(tmp_path / "ddp" / "checkpoints" / "step-3" / "trainable.safetensors"))
    assert trainable and all(k in a for k in trainable)  # no "module." prefix
    moved = max((a[k] - c).abs().max().item() for k, c in
                MoLoRAModel(MoLoRAConfig.preset("tiny")).state_dict().items() if ".lora_B." in k)
    assert moved > 1e-3  # the runs trained something, so the comparison can fail


def test_bad_media_is_skipped_and_reported_and_a_bad_line_stops(tmp_path):
    data = corpus(tmp_path / "data", "asr")
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = [json.loads(l) for l in data.read_text().splitlines()]
    rows.append({"messages": [{"role": "user", "content": [{"type": "image", "image": "broken.png"}]},
                              {"role": "assistant", "content": "x"}]})
    rows.append({"audio": "missing.wav", "text": "gone"})
    good = write_manifest(tmp_path / "data" / "with_bad_media.jsonl", rows)
    recipe = load_recipe("tiny-sft", {"data.train": str(good), "max_steps": 3})
    summary = train(recipe, tmp_path / "out", progress=False)
    assert len(summary["skipped"]) == 2, summary["skipped"]
    assert any("broken.png" in s["item"] or "broken.png" in s["reason"] for s in summary["skipped"])
    assert any("missing.wav" in s["item"] or "missing.wav" in s["reason"] for s in summary["skipped"])
    assert all(":" in s["source"] for s in summary["skipped"])  # file:line
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(saved["skipped"]) == 2
    with pytest.raises(Exception, match="broken.png|missing.wav"):
        train(load_recipe("tiny-sft", {"data.train": str(good), "max_steps": 3}), tmp_path / "strict",
              strict=True, progress=False)
    bad = tmp_path / "data" / "bad_line.jsonl"
    bad.write_text(good.read_text() + "{not json\n")
    from molora.errors import MoLoRAError

    n = len(good.read_text().splitlines()) + 1
    with pytest.raises(MoLoRAError, match=rf"bad_line.jsonl:{n}"):
        train(load_recipe("tiny-sft", {"data.train": str(bad), "max_steps": 3}), tmp_path / "out2", progress=False)


def test_datasets_source_precision_and_activation_checkpointing(tmp_path):
    """Training reads a `datasets` dataset (saved to disk, as a hub dataset would be cached); bf16
    autocast and activation checkpointing run on CPU; checkpointing changes no number."""
    import io

    import soundfile as sf
    from datasets import Audio, Dataset

    from datafactory import WORDS, tone

    def wav(x):
        buf = io.BytesIO()
        sf.write(buf, x, 16000, format="WAV")
        return buf.getvalue()

    ds = Dataset.from_dict({"audio": [{"bytes": wav(tone(w)), "path": None} for w in WORDS],
                            "text": WORDS}).cast_column("audio", Audio())
    ds.save_to_disk(str(tmp_path / "asr"))
    spec = {"path": str(tmp_path / "asr"), "split": "train", "kind": "asr"}
    runs = {}
    for tag, extra in {"plain": {}, "ckpt": {"training.activation_checkpointing": True},
                       "bf16": {"training.precision": "bf16"}}.items():
        recipe = load_recipe("tiny-speech", {"data.train": spec, "max_steps": 4, **extra})
        train(recipe, tmp_path / tag, progress=False)
        runs[tag] = [r["loss"] for r in metrics(tmp_path / tag)]
    assert runs["plain"] == pytest.approx(runs["ckpt"], abs=1e-5)
    # bf16 autocast from the same weights: the first loss differs by bf16 rounding only (8-bit mantissa,
    # ~0.4% per operation, a few percent at most through the forward); later steps also carry the
    # updates' differences, amplified by lr 1e-2, so they are only checked to be finite and different
    assert runs["bf16"][0] == pytest.approx(runs["plain"][0], rel=0.03) and runs["bf16"] != runs["plain"]
    assert all(math.isfinite(x) for x in runs["bf16"])


def test_periodic_evaluation_hook(tmp_path):
    data = corpus(tmp_path / "data", "asr")
    recipe = load_recipe("tiny-speech", {"data.train": str(data), "data.eval": str(data), "max_steps": 4,
                                         "training.eval_every": 2, "training.eval_generate": True})
    train(recipe, tmp_path / "out", progress=False)
    evals = [r for r in metrics(tmp_path / "out") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(r["wer"] >= 0 and r["eval_loss"] > 0 for r in evals)


def _launch(n: int, args: list[str], out: Path, *extra: str, timeout: int = 600):
    """``molora train ARGS`` in ``n`` gloo processes (accelerate launch; one: a plain process), one thread
    each (EXACT_ENV). A launch still running after ``timeout`` seconds (processes waiting at each other's
    collectives) is stopped, its workers with it (the launcher passes SIGTERM on, then kills), and fails
    the test."""
    launcher = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "-m"] if n > 1 else []
    with subprocess.Popen([sys.executable, "-m", *launcher, "molora.cli", "train", *args, "--output-dir", str(out),
                           *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **EXACT_ENV}) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.communicate(timeout=120)
            pytest.fail(f"molora train in {n} processes still running after {timeout} s (hung)")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _same_weights(a: Path, b: Path) -> bool:
    x, y = (load_file(str(p / "final" / "model.safetensors")) for p in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _eval_rows(out: Path) -> list[dict]:
    return [r for r in metrics(out) if "eval_loss" in r]


def _same_evals(a: Path, b: Path) -> None:
    """The eval rows of two runs: the same steps and metrics. Each eval batch holds the same rows on
    either side and is computed the same way (see EXACT_ENV); only the float64 sum of the batches'
    float32 losses runs in another order, within a few units of float64 rounding."""
    ra, rb = _eval_rows(a), _eval_rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] and ra
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        assert all(x[k] == pytest.approx(y[k], rel=1e-12) for k in x)


@pytest.mark.slow
def test_fsdp2_two_processes_equal_one_and_resume(tmp_path):
    """FSDP2 (parameters, gradients, optimiser state sharded over 2 gloo processes) takes the steps
    one process takes, and evaluates as it does (loss, and generation metrics from batches shared over
    the processes); its checkpoints hold each process's shards of the trained tensors only, and resume
    bit-identically on 2 processes and on 1."""
    data = corpus(tmp_path / "data", "mixed")
    corpus(tmp_path / "data", "asr")
    corpus(tmp_path / "data", "vqa")
    held_out = tmp_path / "data" / "eval.jsonl"  # 10 rows: 3 batches of 4, one process gets 2 and the other 1
    held_out.write_text("".join(line for k in ("asr", "vqa")
                                for line in (tmp_path / "data" / f"{k}.jsonl").read_text().splitlines(True)[:5]))
    common = ["--recipe", "tiny-sft", f"data.train={data}", "max_steps=6", "seed=2", "--cpu",
              "training.micro_batch_size=4", f"data.eval={held_out}", "training.eval_every=3",
              "training.eval_generate=true"]
    # the one-process run takes the execution plan a sharded run takes (no frozen-row split), so the
    # two compute the same tensors in the same order
    as_one = ["training.grad_accum=2", "training.split_frozen_rows=false"]
    one = _run_cli([*common, *as_one, "--output-dir", str(tmp_path / "one")], env=EXACT_ENV)
    assert one.wait(timeout=600) == 0, one.stdout.read()
    sharded = [*common, "save_every=3", "training.parallel=fsdp2"]
    two = _launch(2, sharded, tmp_path / "two")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert _same_weights(tmp_path / "one", tmp_path / "two")  # see EXACT_ENV
    _same_evals(tmp_path / "one", tmp_path / "two")
    assert {"wer", "anls"} <= _eval_rows(tmp_path / "two")[-1].keys()
    # the checkpoint: each process's shards of the trained tensors (and of their optimiser state), no frozen one
    ckpt = tmp_path / "two" / "checkpoints" / "step-3"
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (ckpt / "trainable.safetensors").exists() and not (ckpt / "optimizer.pt").exists()
    from molora.stages.freeze import apply_plan
    from molora.stages.sharding import sharded_shapes

    recipe = load_recipe("tiny-sft", {})
    start, _ = build_model(recipe.model, 2)
    apply_plan(start, sorted({c for s in recipe.substeps for c in s.train}))
    trainable = {k for k, p in start.named_parameters() if p.requires_grad}
    final = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    moved = {k for k, v in start.state_dict().items() if not torch.equal(v, final[k])}
    assert set(sharded_shapes(ckpt / "sharded")) == trainable and moved and moved <= trainable
    # resume from the step-3 checkpoint on 2 processes, and on 1 (the same global batch: grad_accum 2; a recipe
    # change, hence --resume-anyway): the same final weights, bit for bit
    import shutil

    for tag, n, extra in (("again", 2, []), ("on-one", 1, as_one)):
        shutil.copytree(tmp_path / "two", tmp_path / tag, ignore=shutil.ignore_patterns("final"))
        again = _launch(n, [*sharded, *extra], tmp_path / tag, "--resume-anyway" if extra else "--resume")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert _same_weights(tmp_path / "two", tmp_path / tag), tag
        assert [r["loss"] for r in metrics(tmp_path / tag) if "loss" in r] == \
            [r["loss"] for r in metrics(tmp_path / "two") if "loss" in r]


@pytest.mark.slow
def test_fsdp2_four_processes_equal_one_and_resume_a_two_process_checkpoint(tmp_path):
    """4 FSDP2 processes of 2 rows each take the steps one process takes with 4 micro-batches of 2, one of
    them text only (a process whose rows are all text has decoder inputs that need no gradient; its first
    layer's reduce-scatter must still come where the other processes' does, see molora/touch_all.py);
    a checkpoint written by 2 FSDP2 processes (2 micro-batches of 2 each: the same global batch of 8)
    resumes on 4 and ends where the uninterrupted runs end.

    Bit for bit (EXACT_ENV): on this corpus every trained tensor's gradient gets non-zero parts from two
    of the four micro-batches at most (rows of one kind share a micro-batch, and the rows of a kind touch
    its adapter and projector only; the others add exact zeros, touch_all), so the order in which one
    process accumulates and gloo reduces them changes no bit. Sums of three or more non-zero parts in
    another order would differ by float32 rounding."""
    data = corpus(tmp_path / "data", "mixed")
    common = ["--recipe", "tiny-sft", f"data.train={data}", "max_steps=4", "seed=2", "--cpu",
              "training.micro_batch_size=2"]
    one = _launch(1, [*common, "training.grad_accum=4", "training.split_frozen_rows=false"], tmp_path / "one")
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    sharded = [*common, "training.parallel=fsdp2"]
    four = _launch(4, sharded, tmp_path / "four")
    assert four.returncode == 0, four.stdout[-3000:] + four.stderr[-3000:]
    assert "returned a view tensor" not in four.stderr  # decoder layers return tensors of their own
    assert _same_weights(tmp_path / "one", tmp_path / "four")
    losses = lambda out: [r["loss"] for r in metrics(out)]  # noqa: E731
    assert losses(tmp_path / "one") == losses(tmp_path / "four")
    # written by 2 processes at step 2, resumed by 4 (grad_accum 2 -> 1: a recipe change, hence --resume-anyway)
    two = _launch(2, [*sharded, "training.grad_accum=2", "save_every=2"], tmp_path / "two")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step-2" / "sharded").iterdir()) == \
        [".metadata", "__0_0.distcp", "__1_0.distcp"]
    import shutil

    shutil.copytree(tmp_path / "two", tmp_path / "on-four", ignore=shutil.ignore_patterns("final"))
    resumed = _launch(4, [*sharded, "save_every=2"], tmp_path / "on-four", "--resume-anyway")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for out in ("two", "on-four"):
        assert _same_weights(tmp_path / "four", tmp_path / out), out
        assert losses(tmp_path / out) == losses(tmp_path / "four"), out


@pytest.mark.slow
def test_fsdp2_process_whose_rows_were_all_skipped_still_takes_the_step(tmp_path):
    """A process whose micro-batch lost every row to unreadable media still runs the step's forward and
    backward under FSDP2 (a stand-in times zero; before, the others waited at its collectives for
    ever): the run takes the steps 2 replicated processes averaging by hand take, bit for bit (each
    parameter's gradient is g0 + g1 either way, one of them exact zeros here)."""
    data = corpus(tmp_path / "data", "mixed")
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = [json.loads(l) for l in data.read_text().splitlines()][:6]
    rows += [{"messages": [{"role": "user", "content": [{"type": "image", "image": "broken.png"},
                                                        {"type": "text", "text": "name it"}]},
                           {"role": "assistant", "content": w}]} for w in ("red", "sun")]
    manifest = write_manifest(tmp_path / "data" / "with_bad_media.jsonl", rows)
    common = ["--recipe", "tiny-sft", f"data.train={manifest}", "max_steps=2", "seed=2", "--cpu",
              "training.micro_batch_size=2"]
    # the hand-written average, like FSDP2, gives a tensor no process reached in a step a zero gradient
    # (AdamW still moves it by its momentum); DDP leaves it without one (AdamW skips it, as one process does)
    replicated = _launch(2, [*common, "training.grad_sync=manual"], tmp_path / "dp", timeout=300)
    assert replicated.returncode == 0, replicated.stdout[-3000:] + replicated.stderr[-3000:]
    sharded = _launch(2, [*common, "training.parallel=fsdp2"], tmp_path / "fsdp2", timeout=300)
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    rows_dp, rows_fsdp = metrics(tmp_path / "dp"), metrics(tmp_path / "fsdp2")
    assert rows_fsdp[0]["skipped"] == 2  # both broken rows come in step 1 (the same length: one micro-batch)
    assert [(r["loss"], r["skipped"]) for r in rows_dp] == [(r["loss"], r["skipped"]) for r in rows_fsdp]
    assert _same_weights(tmp_path / "dp", tmp_path / "fsdp2")


@pytest.mark.slow
def test_fsdp2_dpo_and_evaluation_equal_one_process(tmp_path):
    """DPO under FSDP2 (the frozen reference held as each process's shards) takes the steps one process
    takes: the same losses and rewards, eval losses and final weights."""
    data = corpus(tmp_path / "data", "preference")
    held_out = tmp_path / "data" / "eval.jsonl"  # 10 pairs: 3 batches of 4
    held_out.write_text("".join((data.read_text().splitlines(True) * 2)[:10]))
    common = ["--recipe", "tiny-dpo", f"data.train={data}", "max_steps=4", "seed=2", "--cpu",
              "training.micro_batch_size=4", f"data.eval={held_out}", "training.eval_every=2"]
    one = _run_cli([*common, "training.grad_accum=2", "training.split_frozen_rows=false",
                    "--output-dir", str(tmp_path / "one")], env=EXACT_ENV)
    assert one.wait(timeout=600) == 0, one.stdout.read()
    two = _launch(2, [*common, "training.parallel=fsdp2"], tmp_path / "two")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    keys = ("loss", "reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward")
    steps = lambda out: [{k: r[k] for k in keys} for r in metrics(out) if "loss" in r]  # noqa: E731
    assert steps(tmp_path / "one") == steps(tmp_path / "two")
    assert steps(tmp_path / "two")[-1]["reward_margin"] > 0  # it trained, so the comparison can fail
    _same_evals(tmp_path / "one", tmp_path / "two")
    assert _same_weights(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_prefetch_changes_nothing_but_time(tmp_path):
    """Collating the next step in a background thread (training.prefetch) gives the run it gives
    without: the same weights bit for bit, losses, SpecAugment masks, skip list and checkpoints
    (the sampler position and skip list as of the step, not as of the batch read ahead); a run
    resumed from a prefetching run's checkpoint without prefetch ends in the same weights."""
    data = corpus(tmp_path / "data", "mixed")
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = [json.loads(l) for l in data.read_text().splitlines()]
    rows[7:7] = [{"messages": [{"role": "user", "content": [{"type": "image", "image": "broken.png"}]},
                               {"role": "assistant", "content": "x"}]},
                 {"audio": "missing.wav", "text": "gone"}]
    manifest = write_manifest(tmp_path / "data" / "with_bad_media.jsonl", rows)
    common = {"data.train": str(manifest), "max_steps": 8, "save_every": 2, "keep_last": 10, "seed": 4,
              "training.micro_batch_size": 4, "training.grad_accum": 2,
              "training.spec_augment": {"freq_mask_param": 8, "time_mask_param": 5}}
    runs = {}
    for prefetch in (True, False):
        out = tmp_path / f"prefetch-{prefetch}"
        runs[prefetch] = train(load_recipe("tiny-sft", {**common, "training.prefetch": prefetch}), out, progress=False)
    on, off = tmp_path / "prefetch-True", tmp_path / "prefetch-False"
    assert runs[True]["skipped"] == runs[False]["skipped"] and len(runs[True]["skipped"]) == 2
    assert [r["loss"] for r in metrics(on)] == [r["loss"] for r in metrics(off)]
    assert [r["skipped"] for r in metrics(on)] == [r["skipped"] for r in metrics(off)]
    a, b = (load_file(str(p / "final" / "model.safetensors")) for p in (on, off))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for step in (2, 4, 6):
        sa, sb = (json.loads((p / "checkpoints" / f"step-{step}" / "trainer_state.json").read_text())
                  for p in (on, off))
        assert sa["sampler"] == sb["sampler"] and sa["skipped"] == sb["skipped"], step
    # resume the prefetching run's step-4 checkpoint without prefetch: the same end
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(on, resumed)
    for name in ("final", "checkpoints/step-6"):  # as if killed after the step-4 checkpoint
        shutil.rmtree(resumed / name)
    train(load_recipe("tiny-sft", {**common, "training.prefetch": False}), resumed, resume=True, progress=False)
    c = load_file(str(resumed / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)
