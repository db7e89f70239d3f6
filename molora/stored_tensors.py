"""The tensors of a safetensors checkpoint, known from the file headers and read only when asked for.

A ``StoredTensor`` names one tensor in one file (shape, dtype, the dtype it is read as), so a whole
checkpoint can be planned, validated, renamed and sharded without holding any weights; reading
happens file by file, for a few tensors at a time (``read``). Nothing here merges files on its
own: ``weight_files`` is the one place that says which files of a folder hold its weights.

Memory: tensors read as stored are memory-mapped (their pages are freed with the last tensor of
the file); tensors read in another dtype are read with ``pread`` where safetensors offers it (no
mapping), so a cast costs the converted copy plus one source tensor at a time.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import CheckpointError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"

# safetensors header dtype -> torch dtype (the ones torch has)
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)


class StoredTensor:
    """One tensor of a safetensors file: where it is, its shape, and the dtype it is read as
    (``stored`` unless ``cast`` asked for another; integer tensors are never cast)."""

    __slots__ = ("file", "key", "shape", "stored", "dtype")

    def __init__(self, file: Path, key: str, shape: tuple, stored: torch.dtype, dtype: torch.dtype | None = None):
        self.file, self.key, self.shape, self.stored = Path(file), key, tuple(shape), stored
        self.dtype = stored if dtype is None else dtype

    def cast(self, dtype: torch.dtype | None) -> "StoredTensor":
        if dtype is None or not self.stored.is_floating_point:
            return self
        return StoredTensor(self.file, self.key, self.shape, self.stored, dtype)

    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel() * self.dtype.itemsize

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __repr__(self) -> str:
        return f"StoredTensor({self.file.name}:{self.key}, {self.shape}, {self.stored} -> {self.dtype})"


def weight_files(directory: Path) -> list[Path]:
    """The files that hold a folder's weights: those ``model.safetensors.index.json`` names, else every
    ``*.safetensors`` file (a PEFT folder's ``adapter_model.safetensors``, a single ``model.safetensors``)."""
    directory = Path(directory)
    if (directory / INDEX).exists():
        index = json.loads((directory / INDEX).read_text())
        files = [directory / f for f in dict.fromkeys(index["weight_map"].values())]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError("no .safetensors weights found (molora reads weights from safetensors only)",
                              str(directory))
    return files


def stored_tensors(directory: Path, prefix_filter=None) -> dict[str, StoredTensor]:
    """Every tensor of the folder's weight files, from the headers only (no weight is read)."""
    out = {}
    for f in weight_files(directory):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    if prefix_filter is None or prefix_filter(k):
                        s = fh.get_slice(k)
                        out[k] = StoredTensor(f, k, tuple(s.get_shape()), _torch_dtype(s.get_dtype(), f, k))
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"unreadable safetensors file ({e})", str(f)) from None
    return out


def _torch_dtype(name: str, f: Path, key: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise CheckpointError(f"tensor {key!r} has dtype {name}, which molora cannot read", str(f)) from None


def read(tensors: Mapping[str, StoredTensor | torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, each in its ``dtype``, contiguous on the CPU, in the mapping's order; every file is
    opened once. In-memory tensors pass through (detached, contiguous, on the CPU), so a model's own
    state dict and a stored one are written alike."""
    out: dict[str, torch.Tensor] = {}
    by_file: dict[tuple[Path, bool], list[tuple[str, StoredTensor]]] = {}
    for name, t in tensors.items():
        if isinstance(t, StoredTensor):
            by_file.setdefault((t.file, t.dtype != t.stored), []).append((name, t))
        else:
            out[name] = t.detach().contiguous().cpu()
    for (f, casting), items in by_file.items():
        try:
            with _open(f, copy=casting) as fh:
                for name, t in items:
                    x = fh.get_tensor(t.key)
                    out[name] = x.to(t.dtype) if casting else x
        except Exception as e:
            raise CheckpointError(f"unreadable safetensors file ({e})", str(f)) from None
    return {name: out[name] for name in tensors}


def _open(f: Path, copy: bool):
    """A safetensors handle; ``copy``: read with pread (safetensors >= 0.8), so that the source pages of a
    tensor that is cast do not stay mapped while the rest of the file is read."""
    if copy:
        try:
            return safe_open(str(f), framework="pt", backend="pread")
        except TypeError:  # an older safetensors: memory-mapped
            pass
    return safe_open(str(f), framework="pt")


def total_bytes(tensors: Iterable[StoredTensor | torch.Tensor]) -> int:
    return sum(t.numel() * (t.dtype.itemsize) for t in tensors)
