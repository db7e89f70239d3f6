"""Training checkpoints: trainable weights, optimiser, scheduler, RNG states of every process,
data position. Written to a temporary folder and renamed into place (atomic); keep-last-N.

Two layouts of the weights and optimiser state: ``trainable.safetensors`` + ``optimizer.pt`` (full
tensors, written by rank 0: one process and replicated runs), or ``sharded/`` (a
``torch.distributed.checkpoint`` folder each process writes its shards into: FSDP2 runs; see
``sharding.py``). Either resumes on any number of processes."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from molora.errors import CheckpointError
from molora.staging import partial_folder

from .sharding import SHARDED_DIR, sharded_problem

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


def list_checkpoints(root: Path, *, committed_only: bool = True) -> list[tuple[int, Path]]:
    """(step, folder) of each ``step-N`` checkpoint under ``root``, oldest first; ``committed_only``:
    only those with their ``trainer_state.json`` (the file a checkpoint is committed with)."""
    if not root.exists():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (not committed_only or (p / "trainer_state.json").exists()):
            out.append((int(m.group(1)), p))
    return sorted(out)


def _torch_file_problem(path: Path) -> str | None:
    """torch.save writes a zip archive: a missing, empty or cut-short file has no readable directory."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    try:
        zipfile.ZipFile(path).close()
    except (zipfile.BadZipFile, OSError) as e:
        return f"not a complete torch file ({e})"
    return None


def checkpoint_problem(path: Path) -> tuple[str, str] | None:
    """(file, reason) of the first damaged file of the checkpoint folder ``path``, or None when every
    file it needs is there and whole (cheap checks: headers and archive directories, no tensor read)."""
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        return state_file.name, "missing"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:
        return state_file.name, f"unreadable ({e})"
    m = STEP_DIR.match(path.name)
    if not isinstance(state, dict) or not isinstance(state.get("world_size"), int) or \
            (m is not None and state.get("step") != int(m.group(1))):
        return state_file.name, "not the state of this step (no step / world_size, or another step's)"
    if is_sharded(path):
        problem = sharded_problem(path / SHARDED_DIR)
        if problem is not None:
            return problem
        full_files = []
    else:
        weights = path / "trainable.safetensors"
        if not weights.is_file():
            return weights.name, "missing"
        try:
            with safe_open(str(weights), "pt"):
                pass
        except Exception as e:  # safetensors reports a short file as an error about its header
            return weights.name, f"not a complete safetensors file ({e})"
        full_files = ["optimizer.pt"]
    for name in [*full_files, "scheduler.pt", *(f"rng-{r}.pt" for r in range(state["world_size"]))]:
        problem = _torch_file_problem(path / name)
        if problem is not None:
            return name, problem
    return None


def is_sharded(path: Path) -> bool:
    """Whether the checkpoint folder ``path`` holds its weights as DCP shards (a sharded run's)."""
    return (path / SHARDED_DIR).is_dir()


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a safetensors file, from its header (no tensor is read)."""
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def save_checkpoint(root: Path, step: int, *, weights: dict | None, optimizer_state: dict | None, scheduler,
                    state: dict, rank: int, world: int, barrier, keep_last: int, write_shards=None) -> Path:
    """Every rank writes its RNG state; rank 0 writes the rest (``weights`` / ``optimizer_state`` are
    only needed there) and commits the folder. ``write_shards(folder)`` (a sharded run, called on every
    rank): the weights and optimiser state as each rank's shards instead of ``weights`` /
    ``optimizer_state``. A failed write (a full disk) removes the partial folder and leaves the
    earlier checkpoints as they were."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step-{step}.tmp"
    final = root / f"step-{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    with partial_folder(tmp):
        torch.save(rng_state(), tmp / f"rng-{rank}.pt")
        if write_shards is not None:
            write_shards(tmp / SHARDED_DIR)
        elif rank == 0:
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                      str(tmp / "trainable.safetensors"))
            torch.save(optimizer_state, tmp / "optimizer.pt")
        if rank == 0:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    barrier()
    if rank == 0:
        with partial_folder(tmp):
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
    """Everything a resumed run restores; a file that cannot be read is a CheckpointError naming it
    (``checkpoint_problem`` catches the usual damage before the model is even built). A sharded
    checkpoint's weights and optimiser state are read later, into the model (``"sharded"``: its folder)."""
    def read(name: str, reader):
        try:
            return reader(path / name)
        except (OSError, ValueError, RuntimeError, EOFError) as e:  # torch / safetensors / json errors
            raise CheckpointError(f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                                  f"remove {path} to resume from the checkpoint before it", str(path / name)) from None

    rng_file = path / f"rng-{rank}.pt"
    sharded = is_sharded(path)
    return {
        "state": read("trainer_state.json", lambda p: json.loads(p.read_text())),
        "weights": None if sharded else read("trainable.safetensors", lambda p: load_file(str(p))),
        "optimizer": None if sharded else read("optimizer.pt", lambda p: torch.load(p, weights_only=True)),
        "sharded": path / SHARDED_DIR if sharded else None,
        "scheduler": read("scheduler.pt", lambda p: torch.load(p, weights_only=True)),
        "rng": read(rng_file.name, lambda p: torch.load(p, weights_only=True)) if rng_file.exists() else None,
    }
