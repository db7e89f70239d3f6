"""The tensors of a safetensors checkpoint, known from the file headers and read only when asked for.

A ``StoredTensor`` names one tensor in one file (shape, dtype, the dtype it is read as), so a whole
checkpoint can be planned, validated, renamed and sharded without holding any weights; reading
happens file by file, for a few tensors at a time (``read``). Nothing here merges files on its
own: ``weight_files.weight_files`` is the one place that says which files of a folder hold its weights.

Memory: tensors read as stored are memory-mapped (their pages are freed with the last tensor of
the file); tensors read in another dtype are read with ``pread`` where safetensors offers it (no
mapping), so a cast costs the converted copy plus one source tensor at a time.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from . import weight_files
from .errors import CheckpointError

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


def _headers(f: Path, keys: list[str] | None, index: Path | None, prefix_filter=None) -> dict[str, StoredTensor]:
    """``StoredTensor``s of one file's tensors ``keys`` (None: all), from its header."""
    out = {}
    with weight_files.open_file(f) as fh:
        for k in weight_files.checked_keys(fh, f, keys, index):
            if prefix_filter is None or prefix_filter(k):
                s = fh.get_slice(k)
                out[k] = StoredTensor(f, k, tuple(s.get_shape()), _torch_dtype(s.get_dtype(), f, k))
    return out


def stored_tensors(directory: Path, prefix_filter=None) -> dict[str, StoredTensor]:
    """Every tensor of the checkpoint in ``directory``, from the headers only (no weight is read); the
    files are those `weight_files.weight_files` names (the index's, or ``model.safetensors``)."""
    directory = Path(directory)
    out = {}
    for f, keys in weight_files.weight_files(directory).items():
        out.update(_headers(f, keys, directory / weight_files.INDEX, prefix_filter))
    return out


def stored_adapter(folder: Path) -> dict[str, StoredTensor]:
    """A PEFT folder's tensors (its ``adapter_model.safetensors`` only), from the header."""
    return _headers(weight_files.adapter_file(folder), None, None)


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


def weight_shapes(directory: Path) -> dict[str, tuple]:
    """Key -> shape of every tensor of the checkpoint in ``directory``, from the headers only."""
    return {k: t.shape for k, t in stored_tensors(directory).items()}


def stored_dtype(directory: Path) -> torch.dtype | None:
    """The dtype of the first floating-point tensor of the checkpoint (headers only; None: none)."""
    return next((t.stored for t in stored_tensors(directory).values() if t.stored.is_floating_point), None)
