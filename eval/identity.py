"""Evaluation outputs keyed by what produced them: ``OUT/run.json``.

Re-running an evaluation into the same ``--output-dir`` resumes it: rows already in the result
files are kept and only missing items are generated. That is only right when the same model with
the same settings produced those rows, so ``run.json`` records, before anything is generated:

* the model: the name it was given, and a fingerprint of its weights (``weights_fingerprint``);
* the settings that change predictions: dtype, device type, max_new_tokens, decoding, and per
  data source its path / config / split / prompt. The batch size is not one of them (a run that
  ran out of memory resumes with a smaller one); the sizes used are listed (``batch_sizes``), since
  RTFx then mixes them.

A later run whose record differs is refused with an error listing the differences, unless it
passes ``overwrite=True`` (``--overwrite``), which deletes the earlier result files, summary and
record first. Result files without a ``run.json`` (written by an older molora or another tool)
are refused the same way. A record may grow: an ASR run adds sets to an existing folder when the
model and global settings agree.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from molora.errors import ConfigError

from .report import write_json

__all__ = ["weights_fingerprint", "producer_of", "RunRecord", "read_record", "RECORD"]

RECORD = "run.json"
_SAMPLES_PER_TENSOR = 4096


def weights_fingerprint(model) -> str:
    """sha256 over every parameter and buffer of ``model``: its name, dtype, shape and up to 4096
    evenly spaced values (exact bytes). Training changes whole weight matrices, so two checkpoints
    of one architecture differ here; reading a sample keeps this fast on multi-GB models."""
    import torch

    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        flat = t.reshape(-1)
        if flat.numel() > _SAMPLES_PER_TENSOR:
            idx = torch.linspace(0, flat.numel() - 1, _SAMPLES_PER_TENSOR, device=flat.device).long()
            flat = flat[idx]
        h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def producer_of(model, model_name: str | None, *, batch_size: int, max_new_tokens: int) -> dict:
    """``{"model", "weights", "settings", "batch_size"}`` of a run: the settings are read off the model
    itself (its dtype and device type) plus the generation settings that change predictions."""
    param = next(model.parameters())
    return {"model": model_name, "weights": weights_fingerprint(model), "batch_size": int(batch_size),
            "settings": {"dtype": str(param.dtype).replace("torch.", ""), "device": param.device.type,
                         "max_new_tokens": int(max_new_tokens), "decoding": "greedy"}}


def _describe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _describe_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} there, {b!r} now")
    return out


def read_record(path: Path) -> tuple[dict | None, str | None]:
    """``(record, None)`` from a ``run.json``, or ``(None, why)`` when it is torn, not JSON or not a record."""
    try:
        old = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"not valid JSON ({e.msg if isinstance(e, json.JSONDecodeError) else e.reason}: torn by a " \
                     "crash or edited?)"
    if isinstance(old, dict) and isinstance(old.get("producer"), dict) and isinstance(old.get("sources"), dict) \
            and isinstance(old.get("batch_sizes", []), list):
        return old, None
    return None, "not a run record (it needs 'producer', 'sources' and a 'batch_sizes' list)"


def _written_by_another_command(path: Path) -> str | None:
    """What wrote a readable ``run.json`` that is not an evaluation's (``molora train``'s holds
    ``identity`` and ``status``), or None (an evaluation's, or torn: --overwrite may replace it)."""
    try:
        d = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(d, dict) or "task" in d:
        return None
    return "a molora train run" if {"identity", "status"} <= set(d) else "another program"


class RunRecord:
    """The ``run.json`` of one output folder (see the module docstring).

    ``producer``: ``{"model": name, "weights": fingerprint, "settings": {...}}``, the same for the whole
    folder; ``sources``: ``{result file name: {what was read}}``, one entry per result file."""

    def __init__(self, output_dir, task: str, producer: dict, sources: dict[str, dict]):
        self.out = Path(output_dir)
        self.task, self.producer, self.sources = task, producer, sources
        self.path = self.out / RECORD
        self.batch_sizes = [producer["batch_size"]]

    def _existing_results(self, old: dict | None) -> list[Path]:
        names = set(self.sources) | set((old or {}).get("sources", {}))
        return [self.out / n for n in sorted(names) if (self.out / n).exists() and (self.out / n).stat().st_size]

    def _read_old(self, overwrite: bool) -> tuple[dict | None, str | None]:
        """The folder's record, or ``(None, why)`` when it is torn, not JSON or not a record: an error naming the
        file unless ``overwrite`` (which then starts the folder over)."""
        if not self.path.exists():
            return None, None
        old, why = read_record(self.path)
        if why is None:
            return old, None
        other = _written_by_another_command(self.path)
        if other:  # --overwrite deletes an evaluation's results only, never another command's record
            raise ConfigError(f"is the record of {other}, not of an evaluation: choose another --output-dir "
                              "(--overwrite replaces an evaluation's results only)", str(self.path))
        if not overwrite:
            raise ConfigError(
                f"{why}. It records which model and settings produced the results in {self.out}: choose another "
                "--output-dir, or pass --overwrite (Python: overwrite=True) to delete this folder's results and "
                "start over", str(self.path))
        return None, f"{RECORD} is unreadable ({why})"

    def claim(self, overwrite: bool = False, extra_outputs: tuple[str, ...] = ()) -> None:
        """Check the folder against this run (refuse a mismatch unless ``overwrite``), then write the record."""
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError("is a file; the output folder must be a directory (created when missing)", str(self.out))
        old, unreadable = self._read_old(overwrite)
        results = self._existing_results(old)
        problems: list[str] = [unreadable] if unreadable else []
        if old is None and results and not unreadable:
            problems.append(f"{', '.join(p.name for p in results)} exist(s) but no {RECORD} says what produced them")
        elif old is not None:
            if old.get("task") != self.task:
                problems.append(f"task: {old.get('task')!r} there, {self.task!r} now")
            mine = {"weights": self.producer["weights"], "settings": self.producer["settings"]}
            theirs = {"weights": old.get("producer", {}).get("weights"),
                      "settings": old.get("producer", {}).get("settings", {})}
            problems += _describe_differences(theirs, mine)
            for name, src in self.sources.items():
                before = old.get("sources", {}).get(name)
                if before is not None and before != src and (self.out / name).exists():
                    problems += _describe_differences(before, src, f"{name}: ")
        if problems and not overwrite:
            model = (old or {}).get("producer", {}).get("model")
            raise ConfigError(
                "this folder holds results of another model or other settings"
                + (f" (model {model!r})" if model else "") + ": " + "; ".join(problems)
                + ". Pass --overwrite (Python: overwrite=True) to delete them and start over, or choose another "
                "--output-dir", str(self.out))
        if problems:   # overwrite: the earlier results go, with their summary
            rescored = sorted(self.out.glob("summary.rescored*.json")) + sorted(self.out.glob("summary.rescored*.md"))
            for p in results + rescored + [self.out / n for n in ("summary.json", "summary.md", *extra_outputs)]:
                p.unlink(missing_ok=True)
            old = None
        merged = dict((old or {}).get("sources", {}))
        merged.update(self.sources)
        sizes = list((old or {}).get("batch_sizes", []))
        if self.producer["batch_size"] not in sizes:
            sizes.append(self.producer["batch_size"])
        self.batch_sizes = sizes
        producer = {k: v for k, v in self.producer.items() if k != "batch_size"}
        write_json(self.path, {"task": self.task, "producer": producer, "batch_sizes": sizes, "sources": merged})
