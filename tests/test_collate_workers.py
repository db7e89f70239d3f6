"""Collation in DataLoader worker processes (``training.collate_workers``, stages/collate_workers.py):
the same micro-batches, sampler states and skip list as in-process collation whatever the number
of workers, errors raised at their step, Ctrl-C left to the training process, and a run resumed
with workers ending where an uninterrupted in-process run ends."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from datafactory import corpus, write_manifest
from molora import MoLoRAConfig, MoLoRAProcessor
from molora.data.manifest import read_manifest
from molora.errors import MediaError
from molora.signals import interrupts_between
from molora.stages.collate import Collator
from molora.stages.feed import StepFeed
from molora.stages.recipe import load_recipe
from molora.stages.sampler import LengthGroupedBatches
from molora.stages.trainer import train

SPEC = {"freq_mask_param": 8, "time_mask_param": 5}


@pytest.fixture(scope="module")
def proc():
    return MoLoRAProcessor.from_config(MoLoRAConfig.preset("tiny"))


def with_bad_rows(root: Path, kind: str) -> Path:
    """A ``kind`` corpus with a corrupt image row and a missing-audio row among the good ones."""
    data = corpus(root, kind)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    user = lambda part: [{"role": "user", "content": [part, {"type": "text", "text": "name it"}]}]  # noqa: E731
    if kind == "preference":
        bad = [{"messages": user({"type": "image", "image": "broken.png"}), "chosen": "a", "rejected": "b"},
               {"messages": user({"type": "audio", "audio": "missing.wav"}), "chosen": "c", "rejected": "d"}]
    else:
        bad = [{"messages": user({"type": "image", "image": "broken.png"}) + [{"role": "assistant", "content": "x"}]},
               {"audio": "missing.wav", "text": "gone"}]
    rows[3:3] = bad
    return write_manifest(root / f"{kind}_with_bad_rows.jsonl", rows)


def feed_all(proc, manifest: Path, *, paired: bool, workers: int, steps: int = 8, start: dict | None = None,
             first: int = 0, strict: bool = False, rank: int = 0, world: int = 1):
    """Every step's (micro-batches, sampler state, skip count) and the skip list, from a fresh feed."""
    samples = read_manifest(manifest)
    sampler = LengthGroupedBatches([s.length for s in samples], 4 * world, seed=3)
    if start is not None:
        sampler.load_state_dict(start)
    collator = Collator(proc, spec_augment=SPEC, strict=strict)
    feed = StepFeed(samples, sampler, collator, paired=paired, rank=rank, world=world, grad_accum=2, seed=3,
                    last_step=steps, prefetch=False, workers=workers)
    try:
        got = [feed.get(s) for s in range(first, steps)]
    finally:
        feed.close()
    return [(d.micro, d.sampler_state, d.skipped) for d in got], collator.skipped


def assert_same(a, b, where="batch"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict) or hasattr(a, "keys"):
        assert set(a.keys()) == set(b.keys()), where
        for k in a.keys():
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("kind", ["mixed", "preference"])
def test_workers_collate_what_the_training_process_collates(proc, tmp_path, kind):
    """0, 1 and 2 workers: tensor-equal micro-batches (SpecAugment masks included), the same sampler
    state after every step and the same skip list, grown the same way step by step, over more than
    one epoch (a bad row met again is listed once)."""
    manifest = with_bad_rows(tmp_path, kind)
    paired = kind == "preference"
    runs = {w: feed_all(proc, manifest, paired=paired, workers=w) for w in (0, 1, 2)}
    steps, skipped = runs[0]
    assert sorted(e["source"].rsplit(":", 1)[1] for e in skipped) == ["4", "5"]  # the bad rows' lines, once each
    assert any(m is not None and "audio_input_features" in (m["chosen"] if paired else m)
               for s in steps for m in s[0])  # SpecAugment had clips to mask
    assert steps[-1][1]["epoch"] >= 1  # past the first epoch
    for w in (1, 2):
        assert runs[w][1] == skipped, w
        assert_same([s[1:] for s in runs[w][0]], [s[1:] for s in steps], f"states/skips, {w} workers")
        assert_same([s[0] for s in runs[w][0]], [s[0] for s in steps], f"micro-batches, {w} workers")
    # a feed started from the sampler state after step 3 (a resumed run) continues with the same steps
    resumed, _ = feed_all(proc, manifest, paired=paired, workers=2, start=steps[2][1], first=3)
    assert_same([s[:2] for s in resumed], [s[:2] for s in steps[3:]], "resumed")
    assert not multiprocessing.active_children()  # close() ended the workers


def test_each_process_of_several_gets_its_share_from_its_workers(proc, tmp_path):
    """With 2 processes, each one's workers collate that process's share of the global batch, as the
    process would itself."""
    manifest = with_bad_rows(tmp_path, "mixed")
    for rank in (0, 1):
        want = feed_all(proc, manifest, paired=False, workers=0, steps=4, rank=rank, world=2)
        got = feed_all(proc, manifest, paired=False, workers=2, steps=4, rank=rank, world=2)
        assert got[1] == want[1], rank
        assert_same(got[0], want[0], f"rank {rank}")


def test_the_step_dataset_travels_to_spawned_workers(proc, tmp_path):
    """Where workers are spawned, not forked (macOS; forkserver from Python 3.14), the dataset with the
    collator and its processor is pickled: it pickles, and a copy rebuilt through the same
    ``__getstate__`` / ``__setstate__`` collates what the original collates."""
    import copy as copying
    import pickle

    from molora.stages.collate_workers import StepCollation

    manifest = with_bad_rows(tmp_path, "mixed")
    samples = read_manifest(manifest)
    dataset = StepCollation(samples, Collator(proc, spec_augment=SPEC), paired=False, seed=3)
    assert pickle.dumps(dataset)
    copy = copying.deepcopy(dataset)
    key = (5, [list(range(0, 5)), list(range(5, 10))])
    a, b = dataset[key], copy[key]
    assert a.skipped == b.skipped and len(a.skipped) == 2
    assert_same(a.micro, b.micro)


def test_a_worker_error_is_raised_at_its_step_naming_the_sample(proc, tmp_path):
    manifest = with_bad_rows(tmp_path, "mixed")
    with pytest.raises(MediaError) as want:
        feed_all(proc, manifest, paired=False, workers=0, strict=True)
    with pytest.raises(MediaError) as got:
        feed_all(proc, manifest, paired=False, workers=2, strict=True)
    assert type(got.value) is type(want.value) and str(got.value) == str(want.value)
    assert got.value.item == want.value.item and "with_bad_rows.jsonl" in got.value.item
    assert any("collation worker" in n for n in got.value.__notes__)
    # the steps before it are handed out: the error belongs to its step, not to the worker that met it
    samples = read_manifest(manifest)
    sampler = LengthGroupedBatches([s.length for s in samples], 4, seed=3)
    feed = StepFeed(samples, sampler, Collator(proc, strict=True), paired=False, rank=0, world=1, grad_accum=2,
                    seed=3, last_step=8, prefetch=False, workers=2)
    try:
        done = 0
        with pytest.raises(MediaError):
            for s in range(8):
                feed.get(s)
                done += 1
        bad = {i for i, r in enumerate(samples) if "broken.png" in json.dumps(r.messages) or "missing" in
               json.dumps(r.messages)}
        first_bad = next(k for k, b in enumerate(sampler.epoch_batches(0)) if set(b) & bad)
        assert done == first_bad
    finally:
        feed.close()


def test_ctrl_c_is_left_to_the_training_process(proc, tmp_path):
    """SIGINT reaches every process of the group at a terminal: the workers go on, the training
    process notes it and stops between steps, and closing the feed ends the workers."""
    manifest = corpus(tmp_path, "mixed")
    samples = read_manifest(manifest)
    feed = StepFeed(samples, LengthGroupedBatches([s.length for s in samples], 2, seed=1), Collator(proc),
                    paired=False, rank=0, world=1, grad_accum=1, seed=1, last_step=6, prefetch=False, workers=2)
    try:
        feed.get(0)  # the workers start with Python's own SIGINT handler in place
        workers = multiprocessing.active_children()
        assert len(workers) == 2
        with pytest.raises(KeyboardInterrupt):
            with interrupts_between() as stop_if_asked:
                for _ in range(2):  # twice: a second Ctrl-C does not reach them either
                    for p in workers:
                        os.kill(p.pid, signal.SIGINT)
                    time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGINT)
                for s in range(1, 6):  # the workers still collate
                    assert feed.get(s).micro
                assert all(p.is_alive() for p in workers)
                stop_if_asked()
    finally:
        feed.close()
    assert not multiprocessing.active_children()


def test_a_dead_worker_is_an_error_naming_the_step(proc, tmp_path):
    manifest = corpus(tmp_path, "mixed")
    samples = read_manifest(manifest)
    feed = StepFeed(samples, LengthGroupedBatches([s.length for s in samples], 2, seed=1), Collator(proc),
                    paired=False, rank=0, world=1, grad_accum=1, seed=1, last_step=40, prefetch=False, workers=1)
    try:
        feed.get(0)
        with pytest.raises(RuntimeError, match="worker"):
            for p in multiprocessing.active_children():
                os.kill(p.pid, signal.SIGKILL)
            for s in range(1, 40):
                feed.get(s)
    finally:
        feed.close()


def test_collate_workers_must_not_be_negative():
    from molora.errors import ConfigError

    with pytest.raises(ConfigError, match="training.collate_workers: must be >= 0"):
        load_recipe("tiny-sft", {"training.collate_workers": -1})


@pytest.mark.slow
def test_resumed_with_workers_ends_where_an_in_process_run_ends(tmp_path):
    """A run collated by 2 workers, checkpointed at step 2 and resumed (2 workers), ends in the weights
    and losses of an uninterrupted in-process run; its checkpoints hold the same sampler state and
    skip list."""
    manifest = with_bad_rows(tmp_path / "data", "mixed")
    common = {"data.train": str(manifest), "max_steps": 4, "save_every": 2, "keep_last": 10, "seed": 4,
              "training.micro_batch_size": 2, "training.grad_accum": 2, "training.spec_augment": SPEC}
    base = tmp_path / "in-process"
    want = train(load_recipe("tiny-sft", {**common, "training.collate_workers": 0}), base, progress=False)
    two = tmp_path / "workers"
    train(load_recipe("tiny-sft", {**common, "training.collate_workers": 2}), two, progress=False)
    sa, sb = (json.loads((p / "checkpoints" / "step-2" / "trainer_state.json").read_text()) for p in (base, two))
    assert sa["sampler"] == sb["sampler"] and sa["skipped"] == sb["skipped"]
    shutil.rmtree(two / "final")  # as if killed after the step-2 checkpoint (the last step writes none)
    assert [p.name for p in (two / "checkpoints").iterdir()] == ["step-2"]
    got = train(load_recipe("tiny-sft", {**common, "training.collate_workers": 2}), two, resume=True,
                progress=False)
    assert got["skipped"] == want["skipped"] and len(want["skipped"]) == 2
    losses = lambda p: [r["loss"] for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                        if "loss" in r]
    assert len(losses(base)) == 4 and losses(two) == losses(base)
    a, b = (load_file(str(p / "final" / "model.safetensors")) for p in (base, two))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ctrl_c_at_a_terminal_stops_a_run_with_workers_cleanly(tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C): the run stops between steps with the
    usual line and exit status, no traceback from the workers, and none of its processes is left."""
    data = corpus(tmp_path / "data", "mixed", n=4)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "molora.cli", "train", "--recipe", "tiny-sft", f"data.train={data}",
           "max_steps=100000", "save_every=2", "training.micro_batch_size=2", "training.collate_workers=2",
           "--output-dir", str(out)]
    p = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        t0 = time.time()
        while not list((out / "checkpoints").glob("step-*")) and p.poll() is None and time.time() - t0 < 300:
            time.sleep(0.2)
        assert p.poll() is None, "the run ended before it was interrupted"
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err[-2000:]
    assert "molora train: interrupted" in err and "Traceback" not in err, err[-2000:]
    time.sleep(1)  # the group is gone: signalling it finds no process
    with pytest.raises(ProcessLookupError):
        os.killpg(p.pid, 0)


def test_a_ctrl_c_while_the_workers_start_does_not_kill_them(proc, tmp_path):
    """A terminal's Ctrl-C can reach a worker before its own set-up has run: the workers start with
    SIGINT / SIGTERM blocked, so one that lands then is ignored, not fatal."""
    import threading

    manifest = corpus(tmp_path, "mixed")
    samples = read_manifest(manifest)
    done = threading.Event()

    def spam():  # SIGINT at every worker, from the moment it exists
        while not done.is_set():
            for p in multiprocessing.active_children():
                try:
                    os.kill(p.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
            time.sleep(0.0005)

    feed = StepFeed(samples, LengthGroupedBatches([s.length for s in samples], 2, seed=1), Collator(proc),
                    paired=False, rank=0, world=1, grad_accum=1, seed=1, last_step=4, prefetch=False, workers=2)
    t = threading.Thread(target=spam, daemon=True)
    t.start()
    try:
        for s in range(4):
            assert feed.get(s).micro
    finally:
        done.set()
        t.join()
        feed.close()
    assert not multiprocessing.active_children()
