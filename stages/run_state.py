"""What a training run's output folder holds, and whether this command may use it.

``DIR/run.json`` records what produced the run (the recipe without its bookkeeping keys, a
fingerprint of the training data and of the starting model) and whether it finished; every
checkpoint carries the same identity. Before anything loads, ``plan_run`` decides:

* a folder with no run in it: a fresh run;
* a run and no ``--resume``: refused, unless ``--overwrite`` (which removes the old run's
  checkpoints, final model, metrics and summaries, and nothing else);
* ``--resume``: the newest checkpoint whose files are all there and whole (a damaged newer one is
  named, with the file and the reason, and passed over); the recipe, data and model are compared
  with its (or ``run.json``'s when no checkpoint was written); any difference is refused with the
  keys that changed, unless ``--resume-anyway``; a model whose trainable tensors have other shapes
  than the checkpoint's is refused before anything is written;
* ``--resume`` on a finished run: nothing to train (the command says so and returns).

The folder belongs to one process at a time: ``hold_output_dir`` takes ``molora.folder_lock`` on
rank 0 (the other ranks of a launch wait for its answer) before anything is read or written, and
every rank checks that it sees the same folder (a launch over several machines needs one they all
mount).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from molora.errors import MoLoRAError, RunError
from molora.folder_lock import LOCK_FILE, FolderBusyError, hold_folder
from molora.staging import partial_folder

from .checkpointing import checkpoint_problem, is_sharded, list_checkpoints, tensor_shapes
from .sharding import SHARDED_DIR, sharded_shapes

__all__ = ["RUN_FILE", "RunPlan", "run_identity", "plan_run", "check_output_dir", "start_run", "finished_run",
           "save_final", "write_json_atomic", "write_text_atomic", "describe_changes", "hold_output_dir",
           "check_checkpoint_shapes"]

RUN_FILE = "run.json"
# what a run writes into its folder (--overwrite removes exactly these)
RUN_OUTPUTS = ("checkpoints", "final", "metrics.jsonl", "tensorboard", "summary.json", "recipe.json", "loss.png",
               RUN_FILE)
# recipe keys that change how a run is recorded, not what it computes: free to change on --resume
BOOKKEEPING = {"source", "save_every", "keep_last", "strict", "training.log_every", "training.eval_every",
               "training.eval_generate", "data.eval", "training.prefetch",
               "training.collate_workers"}


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write, renamed onto ``path`` when the block ends: a crash
    leaves the old file or the new, and a failure or an interruption (Ctrl-C, SIGTERM) removes it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data: Any) -> None:
    """``write_text_atomic`` of ``data`` as JSON."""
    write_text_atomic(path, json.dumps(data, indent=1))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in ("data.train",):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _model_files_digest(p: Path) -> str | None:
    """A model folder or file: its config files' bytes and its weight files' names and sizes."""
    if p.is_file():
        return f"{p.name}:{p.stat().st_size}"
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file() and f.suffix == ".json":
            h.update(f.relative_to(p).as_posix().encode() + f.read_bytes())
        elif f.is_file() and f.suffix == ".safetensors":
            h.update(f"{f.relative_to(p).as_posix()}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def data_fingerprint(spec: Any) -> str:
    """sha256 of a manifest's bytes, or of a datasets spec (its hub id / folder and options)."""
    if isinstance(spec, (str, os.PathLike)) and Path(spec).expanduser().is_file():
        return "manifest:" + file_digest(Path(spec).expanduser())
    return "spec:" + hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(spec: dict) -> dict[str, str | None]:
    """For each local path the model section names (path, backbone, vision): a digest of its files; for a
    preset started from its shipped weights, a digest of those."""
    out = {}
    for key in ("path", "backbone", "vision"):
        value = spec.get(key)
        if value:
            p = Path(str(value)).expanduser()
            if not p.exists():
                from molora.checkpoint import preset_weights

                shipped = preset_weights(str(value)) if "/" not in str(value) else None
                p = shipped if shipped is not None else p
            out[key] = _model_files_digest(p) if p.exists() else str(value)
    from .starting_weights import shipped_weights

    shipped = shipped_weights(spec)
    if shipped is not None:  # a preset run starts from these bytes: another build of them is another start
        out["preset_weights"] = file_digest(shipped)
    return out


def run_identity(recipe) -> dict:
    """What produced a run: the recipe (minus BOOKKEEPING keys), the data and model fingerprints."""
    flat = {k: v for k, v in _flatten(recipe.to_dict()).items() if k not in BOOKKEEPING}
    return {"recipe": json.loads(json.dumps(flat, default=str)), "data": data_fingerprint(recipe.data.get("train")),
            "model": model_fingerprint(recipe.model)}


def _old_universal_default(key: str, value) -> bool:
    """Whether ``key`` is a stage-settings field at its default, which runs recorded before stages carried
    their own settings wrote for every stage (``dpo.beta: 0.1`` in an SFT run): not a change of the run."""
    import dataclasses

    from .table import STAGES

    section, _, name = key.partition(".")
    settings = STAGES[section].settings if section in STAGES else None
    if settings is None:
        return False
    fields = {f.name: f.default for f in dataclasses.fields(settings)}
    return name in fields and fields[name] == value


def _added_at_default(key: str, value) -> bool:
    """Whether ``key`` is a training field at its default, which runs recorded before the field existed
    do not name (``training.betas``): not a change of the run."""
    import dataclasses

    from .recipe import Training

    section, _, name = key.partition(".")
    fields = {f.name: f.default for f in dataclasses.fields(Training)
              if f.default is not dataclasses.MISSING} if section == "training" else {}
    return name in fields and json.loads(json.dumps(fields[name])) == value


def describe_changes(old: dict, new: dict) -> list[str]:
    """Human lines for what differs between two identities ("training.lr: 0.01 -> 0.0002")."""
    lines = []
    a, b = old.get("recipe", {}), new.get("recipe", {})
    for k in sorted(set(a) | set(b)):
        if k not in b and _old_universal_default(k, a[k]):
            continue
        if k not in a and _added_at_default(k, b[k]):
            continue
        if a.get(k) != b.get(k):
            lines.append(f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}")
    if old.get("data") != new.get("data"):
        lines.append(f"training data: fingerprint {old.get('data')} -> {new.get('data')} (the rows changed)")
    if old.get("model") != new.get("model"):
        lines.append(f"starting model: files {old.get('model')} -> {new.get('model')}")
    return lines


@dataclass
class RunPlan:
    """``mode``: "fresh" | "resume" | "finished"; ``identity``: this command's (run_identity);
    ``checkpoint``: the step folder to resume from; ``changes``: how this command differs from it;
    ``previous``: the folder's run.json."""

    mode: str
    identity: dict
    checkpoint: Path | None = None
    changes: list[str] = field(default_factory=list)
    previous: dict = field(default_factory=dict)
    damaged: list[tuple[Path, str, str]] = field(default_factory=list)  # newer checkpoints passed over: (folder, file, reason)

    def fallback_lines(self) -> list[str]:
        """One line per damaged checkpoint passed over by --resume."""
        to = f"resuming from {self.checkpoint.name}, the newest intact checkpoint" if self.checkpoint else ""
        return [f"[molora] --resume: {folder} is damaged ({name}: {reason}); {to}" for folder, name, reason in self.damaged]


def _read_run(out: Path) -> dict:
    f = out / RUN_FILE
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return {}


def _existing(out: Path) -> list[str]:
    return [name for name in RUN_OUTPUTS if (out / name).exists()]


def check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunError("--output-dir is a file, not a directory; choose a folder (it is created if missing)",
                       str(out))
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"{parent} is a file, so the output folder cannot be created under it", str(out))
            break


def plan_run(out: Path, identity: dict, *, resume: bool, overwrite: bool, resume_anyway: bool) -> RunPlan:
    """Decide what this command does with ``out`` (see the module docstring); no side effects."""
    check_output_dir(out)
    if resume and overwrite:
        raise RunError("--resume continues the run in this folder and --overwrite replaces it: choose one", str(out))
    existing = _existing(out) if out.is_dir() else []
    previous = _read_run(out)
    if isinstance(previous, dict) and "task" in previous and "producer" in previous:  # eval/identity.py's record
        raise RunError(f"holds the results of molora eval {previous.get('task')} ({', '.join(existing)}): a training "
                       "run needs its own folder; choose another --output-dir (--overwrite and --resume act on a "
                       "training run only)", str(out))
    if not resume:
        if existing and not overwrite:
            found = list_checkpoints(out / "checkpoints")
            what = (f"finished at step {previous.get('steps')}" if previous.get("status") == "finished" else
                    f"checkpoints up to step {found[-1][0]}" if found else ", ".join(existing))
            raise RunError(f"already holds a training run ({what}); pass --resume to continue it, --overwrite to "
                           "replace it, or choose another --output-dir", str(out))
        return RunPlan("fresh", identity, previous=previous)
    checkpoint, damaged = None, []
    for _, folder in reversed(list_checkpoints(out / "checkpoints", committed_only=False)):
        problem = checkpoint_problem(folder)
        if problem is None:
            checkpoint = folder
            break
        damaged.append((folder, *problem))
    recorded = previous.get("identity")
    if checkpoint is not None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        recorded = state.get("identity", recorded)
    changes = describe_changes(recorded, identity) if recorded else []
    if previous.get("status") == "finished" and (out / "final").is_dir():
        return RunPlan("finished", identity, checkpoint, changes, previous)
    if damaged and checkpoint is None:
        what = "; ".join(f"{folder.name}: {name}: {reason}" for folder, name, reason in damaged)
        raise RunError(f"--resume: no intact checkpoint to continue from ({what}); start again with --overwrite "
                       "(or another --output-dir)", str(out / "checkpoints"))
    if changes and not resume_anyway:
        where = checkpoint.name if checkpoint is not None else RUN_FILE
        raise RunError(f"--resume: this command differs from the run it would continue ({where}): "
                       + "; ".join(changes) + ". Pass --resume-anyway to continue with the new settings, or "
                       "--overwrite (or another --output-dir) to start a new run", str(out))
    return RunPlan("resume", identity, checkpoint, changes, previous, damaged)


def clear_run(out: Path) -> None:
    """Remove what a previous run wrote (RUN_OUTPUTS) and nothing else."""
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


# temporary names molora's own writers use in a run folder (a run killed mid-write leaves them)
_LEFTOVERS = (".final.partial", "..final.partial.tmp-*", "..final.partial.old-*", ".*.json.tmp", ".metrics.jsonl.tmp",
              ".loss.png.tmp", "checkpoints/.step-*.tmp")


def clear_leftovers(out: Path) -> None:
    """Remove the temporary files and folders an interrupted run of this folder left (only those names:
    the caller holds the folder, so no writer of them is alive)."""
    for pattern in _LEFTOVERS:
        for p in out.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@contextmanager
def hold_output_dir(out: Path, dist, what: str = "molora train") -> Iterator[None]:
    """Hold ``out`` for this run (``molora.folder_lock``): rank 0 takes the lock, every rank learns
    whether it could, so a refused launch stops on every process instead of waiting at a barrier."""
    with ExitStack() as stack:
        failure: BaseException | None = None
        if dist.is_main:
            try:
                stack.enter_context(hold_folder(out, what=what))
            except (MoLoRAError, OSError) as e:
                failure = e
        if dist.all_sum([1.0 if failure is not None else 0.0])[0]:
            raise failure if failure is not None else FolderBusyError(
                "in use by another run (the launch's first process could not take it)", str(out))
        check_one_folder(out, dist)
        yield


def _lock_record(out: Path) -> list[float] | None:
    """(pid, start time) of the holder recorded in ``out``'s lock file, or None if it cannot be read."""
    try:
        info = json.loads((out / LOCK_FILE).read_text())
        return [float(info["pid"]), float(info["started"])]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_one_folder(out: Path, dist, tries: int = 5, wait_s: float = 0.5) -> None:
    """Every process of the launch sees, in ``out``, the lock record rank 0 has just written (a
    launch over several machines needs an output folder they all mount: rank 0 writes the
    checkpoints, every rank its RNG state beside them, and each reads them back on resume); else
    a RunError on every process, before anything is read or written. Rank 0 flushes the record to
    the file's server first; a network filesystem slow to show it gets a few tries."""
    if dist.world == 1:
        return
    if dist.is_main:
        _flush(out / LOCK_FILE)
    for attempt in range(tries):
        mine = _lock_record(out)
        held = dist.all_sum(mine if dist.is_main and mine is not None else [0.0, 0.0])
        blind = mine != held
        count = int(dist.all_sum([1.0 if blind else 0.0])[0])
        if not count:
            return
        if attempt < tries - 1:
            time.sleep(wait_s)
    import socket

    this = f"process {dist.rank} on {socket.gethostname()} {'is one' if blind else 'sees it'}"
    raise RunError(f"not one folder for the whole launch: {count} of its {dist.world} processes do not see the lock "
                   f"the first process took in it ({this}); on several machines the output folder must be on a "
                   "filesystem every node mounts, at the same path", str(out))


def _flush(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)  # the file's data, whichever descriptor wrote it
    except OSError:
        pass
    finally:
        os.close(fd)


def check_checkpoint_shapes(checkpoint: Path, model) -> None:
    """Every tensor of the checkpoint is a parameter of ``model`` with the same shape, or one line
    naming the tensor and both shapes (checked before the run writes anything)."""
    if is_sharded(checkpoint):
        weights = checkpoint / SHARDED_DIR
        shapes = sharded_shapes(weights)
    else:
        weights = checkpoint / "trainable.safetensors"
        shapes = tensor_shapes(weights)
    named = dict(model.named_parameters())
    for name, shape in shapes.items():
        if name not in named:
            raise RunError(f"--resume: tensor {name} of the checkpoint is not a parameter of this run's model; "
                           "this model cannot continue it (start a new run: --overwrite or another --output-dir)",
                           str(weights))
        mine = tuple(named[name].shape)
        if mine != shape:
            raise RunError(f"--resume: tensor {name} has shape {list(shape)} in the checkpoint and {list(mine)} in "
                           "this run's model; this model cannot continue it (start a new run: --overwrite or "
                           "another --output-dir)", str(weights))


def start_run(recipe, out: Path, dist, plan: RunPlan) -> None:
    """Apply the plan to ``out``: a fresh run clears what an earlier run wrote (--overwrite), then
    ``run.json`` and ``recipe.json`` record this run (a resume with --resume-anyway lists its changes)."""
    dist.barrier()  # every process has read the folder before rank 0 changes it
    if dist.rank == 0:
        if plan.mode == "fresh":
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        clear_leftovers(out)
        from .starting_weights import start_record

        record = {"status": "running", "identity": plan.identity, "max_steps": recipe.max_steps,
                  "start": start_record(recipe.model, recipe.seed)}
        if plan.mode == "resume" and plan.changes:
            record["resumed_with_changes"] = plan.previous.get("resumed_with_changes", []) + [plan.changes]
            print("[molora] --resume-anyway: continuing with changes: " + "; ".join(plan.changes))
        write_json_atomic(out / RUN_FILE, record)
        write_json_atomic(out / "recipe.json", recipe.to_dict())
    dist.barrier()


def finished_run(out: Path, plan: RunPlan, is_main: bool) -> dict:
    """--resume on a finished run: say so, train nothing, return its summary."""
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    if is_main:
        steps = summary.get("steps", plan.previous.get("max_steps", "?"))
        note = (" This command also changes: " + "; ".join(plan.changes) + ".") if plan.changes else ""
        print(f"[molora] {out}: this run finished at step {steps} ({out / 'final'} is written); nothing to train.{note} "
              f"To train further, start a new run from it: model.path={out / 'final'} --output-dir NEW_DIR")
    return {**summary, "already_finished": True}


def save_final(model, processor, out: Path) -> None:
    """``out/final`` written beside its place and renamed in (a crash leaves no half-written model)."""
    tmp = out / ".final.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with partial_folder(tmp):
        # a quantised base is never written: final/ then holds the trained parts and a record of the base
        model.save_pretrained(tmp, without_base=getattr(model, "quantization", None) is not None)
        processor.save_pretrained(tmp)
    shutil.rmtree(out / "final", ignore_errors=True)
    os.replace(tmp, out / "final")
