"""Which files hold a checkpoint's weights, and reading them (safetensors only).

Weights come only from the files the index (``model.safetensors.index.json``: its ``weight_map``,
tensor name -> shard file) or the canonical name (``model.safetensors``) point to; a PEFT folder's
from its ``adapter_model.safetensors``. Other ``*.safetensors`` files beside them (a backup, an
older export) are never read. `weight_files` is the one place that decides which files and which
tensors of each: the readers below (whole state dict, headers only) and any later reader that goes
shard by shard start from it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import CheckpointError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


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
    others = sorted(p.name for p in directory.glob("*.safetensors"))
    hint = (f" ({', '.join(others[:3])} {'is' if len(others) == 1 else 'are'} not read: weights come only "
            f"from {WEIGHTS} or the files {INDEX} names)") if others else " (molora reads safetensors only)"
    raise CheckpointError(f"no {WEIGHTS} or {INDEX}{hint}", str(directory))


def _open(f: Path):
    try:
        return safe_open(str(f), framework="pt")
    except Exception as e:  # safetensors' own error type: truncated, corrupt header, unknown dtype
        raise CheckpointError(f"unreadable safetensors file ({e})", str(f)) from None


def _keys(fh, f: Path, wanted: list[str] | None, index: Path | None) -> list[str]:
    if wanted is None:
        return list(fh.keys())
    present = set(fh.keys())
    absent = [k for k in wanted if k not in present]
    if absent:
        raise CheckpointError(f"names tensor {absent[0]!r} in {f.name}, which does not hold it"
                              + (f" ({len(absent)} such tensors)" if len(absent) > 1 else ""), str(index))
    return wanted


def read_file(f: Path, keys: list[str] | None = None, keep=None, index: Path | None = None) -> dict[str, torch.Tensor]:
    """Tensors ``keys`` (None: all) of one safetensors file; ``keep(key)`` filters them."""
    out = {}
    with _open(f) as fh:
        for k in _keys(fh, f, keys, index):
            if keep is None or keep(k):
                try:
                    out[k] = fh.get_tensor(k)
                except Exception as e:
                    raise CheckpointError(f"unreadable tensor {k!r} ({e})", str(f)) from None
    return out


def read_weights(directory: Path, keep=None) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``directory`` (see `weight_files`); ``keep(key)`` filters them."""
    directory = Path(directory)
    out = {}
    for f, keys in weight_files(directory).items():
        out.update(read_file(f, keys, keep, directory / INDEX))
    return out


def read_adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A PEFT folder's tensors: its ``adapter_model.safetensors`` only."""
    f = Path(folder) / ADAPTER_WEIGHTS
    if not f.is_file():
        raise CheckpointError(f"no {ADAPTER_WEIGHTS} (PEFT adapter weights are read from that file only)",
                              str(folder))
    return read_file(f)


def weight_headers(directory: Path) -> dict[str, tuple[tuple, str]]:
    """Key -> (shape, safetensors dtype name) of every tensor of the checkpoint, from the headers only."""
    directory = Path(directory)
    out = {}
    for f, keys in weight_files(directory).items():
        with _open(f) as fh:
            for k in _keys(fh, f, keys, directory / INDEX):
                s = fh.get_slice(k)
                out[k] = (tuple(s.get_shape()), s.get_dtype())
    return out


def weight_shapes(directory: Path) -> dict[str, tuple]:
    """Key -> shape of every tensor of the checkpoint, read from the headers only."""
    return {k: shape for k, (shape, _) in weight_headers(directory).items()}


def stored_dtype(directory: Path) -> torch.dtype | None:
    """The dtype of the first floating-point tensor of the checkpoint (headers only; None: none)."""
    return next((_DTYPES[d] for _, d in weight_headers(directory).values() if d in _DTYPES), None)
