"""Training checkpoints: trainable weights, optimiser, scheduler, RNG states of every process,
data position. Written to a temporary folder and renamed into place (atomic); keep-last-N."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from molora.staging import partial_folder

STEP_DIR = re.compile(r"step-(\d+)$")


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
          "python_pos": random.getstate()[2], "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
          "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((3, tuple(int(x) for x in st["python"]), st["python_pos"]))
    np.random.set_state(("MT19937", st["numpy"].numpy().astype(np.uint32), int(st["numpy_pos"]), 0, 0.0))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.exists():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def save_checkpoint(root: Path, step: int, *, weights: dict, optimizer_state: dict, scheduler, state: dict,
                    rank: int, world: int, barrier, keep_last: int) -> Path:
    """Every rank writes its RNG state; rank 0 writes the rest (``weights`` / ``optimizer_state`` are
    only needed there) and commits the folder. A failed write (a full disk) removes the partial
    folder and leaves the earlier checkpoints as they were."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step-{step}.tmp"
    final = root / f"step-{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    with partial_folder(tmp):
        torch.save(rng_state(), tmp / f"rng-{rank}.pt")
        if rank == 0:
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                      str(tmp / "trainable.safetensors"))
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    barrier()
    if rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "world_size": world}, indent=1))
        with open(tmp / "trainer_state.json", "rb") as fh:
            os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    _fault_hook(step)
    return final


# For tests of crash recovery only: a process that has just committed checkpoint N kills itself
# (SIGKILL: no cleanup, as with an OOM kill or a power cut), so a resume test kills at a known step.
KILL_AFTER_ENV = "MOLORA_TEST_SIGKILL_AFTER_CHECKPOINT"


def _fault_hook(step: int) -> None:
    at = os.environ.get(KILL_AFTER_ENV)
    if at and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def load_checkpoint(path: Path, rank: int) -> dict:
    state = json.loads((path / "trainer_state.json").read_text())
    rng_file = path / f"rng-{rank}.pt"
    return {
        "state": state,
        "weights": load_file(str(path / "trainable.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "scheduler": torch.load(path / "scheduler.pt", weights_only=True),
        "rng": torch.load(rng_file, weights_only=True) if rng_file.exists() else None,
    }
