"""Which files hold a checkpoint's weights, and reading them (safetensors only).

Weights come only from the files the index (``model.safetensors.index.json``: its ``weight_map``,
tensor name -> shard file) or the canonical name (``model.safetensors``) point to; a PEFT folder's
from its ``adapter_model.safetensors``. Other ``*.safetensors`` files beside them (a backup, an
older export) are never read. `weight_files` is the one place that decides which files and which
tensors of each; `molora.stored_tensors` reads them (headers first, weights shard by shard).
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from .errors import CheckpointError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
QUANTIZED_BASE_RECORD = "quantized_base.json"  # a quantised-base folder's record of its original weights


def _index(path: Path) -> dict[str, str]:
    """The ``weight_map`` of an index file, checked: an object of tensor name -> file name in the folder."""
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"not valid JSON ({e})", str(path)) from None
    except UnicodeDecodeError:
        raise CheckpointError("not a text (JSON) file", str(path)) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError("has no 'weight_map' (an object: tensor name -> .safetensors file name)", str(path))
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name.endswith(".safetensors") or Path(name).name != name:
            raise CheckpointError(f"weight_map[{key!r}] is {name!r}, not the name of a .safetensors file in "
                                  "this folder", str(path))
    return weight_map


def weight_files(directory: Path) -> dict[Path, list[str] | None]:
    """The files holding the weights of the checkpoint in ``directory``, each with the tensor names to
    read from it (None: all): the index's files and names when there is an index, else
    ``model.safetensors``. A file the index names must exist."""
    directory = Path(directory)
    if (directory / INDEX).is_file():
        files: dict[Path, list[str]] = {}
        for key, name in _index(directory / INDEX).items():
            files.setdefault(directory / name, []).append(key)
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"names {f.name}, which is missing", str(directory / INDEX))
        return dict(files)
    if (directory / WEIGHTS).is_file():
        return {directory / WEIGHTS: None}
    # names only, for the message: none of these files is opened (weights come from the two above alone)
    others = sorted(p.name for p in directory.glob("*.safetensors"))
    hint = (f" ({', '.join(others[:3])} {'is' if len(others) == 1 else 'are'} not read: weights come only "
            f"from {WEIGHTS} or the files {INDEX} names)") if others else " (molora reads safetensors only)"
    raise CheckpointError(f"no {WEIGHTS} or {INDEX}{hint}", str(directory))


def open_file(f: Path):
    try:
        return safe_open(str(f), framework="pt")
    except Exception as e:  # safetensors' own error type: truncated, corrupt header, unknown dtype
        raise CheckpointError(f"unreadable safetensors file ({e})", str(f)) from None


def checked_keys(fh, f: Path, wanted: list[str] | None, index: Path | None) -> list[str]:
    if wanted is None:
        return list(fh.keys())
    present = set(fh.keys())
    absent = [k for k in wanted if k not in present]
    if absent:
        raise CheckpointError(f"names tensor {absent[0]!r} in {f.name}, which does not hold it"
                              + (f" ({len(absent)} such tensors)" if len(absent) > 1 else ""), str(index))
    return wanted


def adapter_file(folder: Path) -> Path:
    """A PEFT folder's weights file: its ``adapter_model.safetensors`` (no other file is read)."""
    f = Path(folder) / ADAPTER_WEIGHTS
    if not f.is_file():
        raise CheckpointError(f"no {ADAPTER_WEIGHTS} (PEFT adapter weights are read from that file only)",
                              str(folder))
    return f
