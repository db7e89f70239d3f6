"""An output folder belongs to one process at a time: a second `molora train` (or `--overwrite`)
into a folder in use is refused with one line and touches nothing; a holder killed with SIGKILL
leaves no lock behind; SIGTERM is handled like Ctrl-C; the quickstart's folder is held too."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from datafactory import corpus
from molora.folder_lock import LOCK_FILE, FolderBusyError, hold_folder

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "molora.cli", "train", *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _steps(out: Path) -> list[int]:
    return [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


HOLDER = textwrap.dedent("""
    import sys, time
    from molora.folder_lock import hold_folder
    with hold_folder(sys.argv[1], what="molora train"):
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_held_folder_is_refused_and_a_sigkilled_holder_leaves_no_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError) as e:
            with hold_folder(out, what="molora train"):
                pass
        msg = str(e.value)
        assert msg.startswith(f"{out}: in use by molora train (pid {holder.pid} on ") and "\n" not in msg
        assert "wait for it to finish or stop it, or choose another folder" in msg
    finally:
        holder.kill()  # SIGKILL: no cleanup in the holder
        holder.wait()
    with hold_folder(out, what="molora train"):  # the kernel released the lock with the process
        assert (out / LOCK_FILE).exists()


SLOW_RECORDER = textwrap.dedent("""
    import fcntl, json, os, socket, sys, time
    from molora.folder_lock import LOCK_FILE
    os.makedirs(sys.argv[1], exist_ok=True)
    fd = os.open(os.path.join(sys.argv[1], LOCK_FILE), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(0.5)  # a holder that is slow to record who it is (a loaded machine)
    os.pwrite(fd, json.dumps({"what": "molora train", "pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.time(), "command": "molora train"}).encode(), 0)
    time.sleep(600)
""")


def test_a_holder_that_has_just_taken_the_lock_is_still_named(tmp_path):
    # two commands started together: the refused one must name the winner, not "another process",
    # even when it looks while the winner holds the lock but has not yet written its record
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", SLOW_RECORDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusyError) as e:
            with hold_folder(out, what="molora train"):
                pass
        assert str(e.value).startswith(f"{out}: in use by molora train (pid {holder.pid} on ")
    finally:
        holder.kill()
        holder.wait()


def test_a_folder_created_for_nothing_is_removed_again(tmp_path):
    with hold_folder(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with hold_folder(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir()  # it was there before


@pytest.mark.slow
def test_two_trainings_into_one_folder_one_runs_and_overwrite_of_a_busy_folder_is_refused(tmp_path):
    data = corpus(tmp_path / "data", "mixed", n=4)
    out = tmp_path / "run"
    common = ["--recipe", "tiny-sft", f"data.train={data}", "training.micro_batch_size=2", "--output-dir", str(out)]
    # two started together: exactly one trains, the other is refused with one line
    a, b = _cli(*common, "max_steps=3"), _cli(*common, "max_steps=3")
    results = [(p.wait(timeout=600), *p.communicate()) for p in (a, b)]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], [r[2][-2000:] for r in results]
    refused = next(r for r in results if r[0] == 2)[2].strip()
    assert len(refused.splitlines()) == 1 and "Traceback" not in refused
    assert refused.startswith(f"molora train: error: {out}: in use by molora train (pid ")
    assert _steps(out) == [1, 2, 3]  # one run's rows
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    # --overwrite of the folder while a run trains in it (a run far longer than the test): refused, the
    # run goes on untouched; then SIGTERM stops it like Ctrl-C, without temporary files left behind
    a = _cli(*common, "max_steps=100000", "save_every=2", "--overwrite")
    t0 = time.time()
    while not list((out / "checkpoints").glob("step-*")) and a.poll() is None and time.time() - t0 < 300:
        time.sleep(0.1)
    assert a.poll() is None, a.communicate()[1][-2000:]
    b = _cli(*common, "max_steps=2", "--overwrite")
    _, err = b.communicate(timeout=600)
    assert b.returncode == 2 and len(err.strip().splitlines()) == 1, err[-2000:]
    assert f"{out}: in use by molora train (pid {a.pid} on " in err and "--overwrite" in err
    assert a.poll() is None  # still training
    a.send_signal(signal.SIGTERM)
    _, err_a = a.communicate(timeout=120)
    assert a.returncode == 143, err_a[-2000:]  # 128 + SIGTERM, as a shell reports a process stopped by it
    assert "Traceback" not in err_a
    line = next(l for l in err_a.splitlines() if l.startswith("molora train: terminated (SIGTERM)"))
    assert "the newest checkpoint is" in line and line.endswith(" --resume")
    steps = _steps(out)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # one run's rows, nothing of b's
    assert json.loads((out / "recipe.json").read_text())["max_steps"] == 100000
    assert not [q.name for q in out.rglob("*") if q.name.endswith(".tmp") or ".tmp-" in q.name or "partial" in q.name]
    with hold_folder(out):  # released
        pass


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_its_leftovers_are_cleared(tmp_path):
    from molora.stages.checkpointing import KILL_AFTER_ENV

    data = corpus(tmp_path / "data", "mixed", n=4)
    out = tmp_path / "run"
    common = ["--recipe", "tiny-sft", f"data.train={data}", "training.micro_batch_size=2", "max_steps=4",
              "save_every=2", "--output-dir", str(out)]
    victim = _cli(*common, env={KILL_AFTER_ENV: "2"})
    victim.communicate(timeout=600)
    assert victim.returncode == -signal.SIGKILL
    # what a run killed in the middle of its writes leaves (temporary names of molora's own writers)
    (out / "..final.partial.tmp-x1").mkdir()
    (out / ".final.partial").mkdir()
    (out / ".run.json.tmp").write_text("{")
    (out / "checkpoints" / ".step-4.tmp").mkdir()
    resumed = _cli(*common, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]  # the dead run's lock did not block it
    assert _steps(out) == [1, 2, 3, 4]
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE)
    assert left == [] and not list((out / "checkpoints").glob(".*")), left


def test_quickstart_refuses_a_folder_in_use(tmp_path, monkeypatch):
    from molora import quickstart
    from molora.synthetic import build

    def no_corpora(*a, **k):
        raise AssertionError("the quickstart started although its folder is in use")

    monkeypatch.setattr(build, "build_corpora", no_corpora)
    out = tmp_path / "qs"
    with hold_folder(out, what="molora quickstart"):
        with pytest.raises(FolderBusyError, match=rf"{out}: in use by molora quickstart \(pid {os.getpid()} on "):
            quickstart.run(out, fast=True)
