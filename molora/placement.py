"""Where a loaded model goes and in which dtype: ``from_pretrained``'s ``dtype`` / ``torch_dtype``
and ``device_map`` arguments, under transformers' names and meanings.

- ``dtype`` (or ``torch_dtype``): ``"auto"`` / None keeps the dtype the weights are stored in (a
  bfloat16 checkpoint stays memory-mapped, nothing is copied); a ``torch.dtype`` or its name
  (``"float32"``, ``"bfloat16"``, ...) converts.
- ``device_map``: one device (``"cpu"``, ``"cuda:1"``, ``1``, a ``torch.device``), or ``"auto"``:
  accelerate places the decoder, the vision tower and the audio encoder on the accelerators, then
  the CPU, each part whole (the decoder's layers hand one route along a forward, so the decoder
  is never split); or a dict {module name: device} in accelerate's format.

A request that the memory cannot hold is an error before anything is allocated (a bfloat16
checkpoint of the real model asked for in float32 needs 22 GB), never a silent swap storm.
"""
from __future__ import annotations

import torch

from .errors import CheckpointError


def no_split(model) -> list[str]:
    """The parts a device map may place, each whole: the decoder and every modality's embedder
    (modules without weights follow the decoder)."""
    parts = [model.language_model] + [getattr(model, m.module_name) for m in model.config.modality_entries()]
    return sorted({type(p).__name__ for p in parts})


def resolve_dtype(dtype=None, torch_dtype=None, stored: torch.dtype | None = None) -> torch.dtype | None:
    """The dtype to load in (None: as stored). ``torch_dtype`` is transformers' older name."""
    if dtype is not None and torch_dtype is not None and _as_dtype(dtype) != _as_dtype(torch_dtype):
        raise CheckpointError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them", "dtype")
    want = _as_dtype(dtype if dtype is not None else torch_dtype)
    return stored if want is None else want


def _as_dtype(value) -> torch.dtype | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"unknown dtype {value!r} (use 'auto', 'float32', 'bfloat16' or 'float16')", "dtype")
    return dtype


def as_device(value) -> torch.device:
    try:
        return torch.device(f"cuda:{value}" if isinstance(value, int) else value)
    except (RuntimeError, TypeError):
        raise CheckpointError(f"unknown device {value!r}", "device_map") from None


def on_cpu(device_map) -> bool:
    """Whether ``device_map`` puts the whole model on the CPU (None: where it is loaded, the CPU); a model
    that stays on the CPU is cast as its tensors are read, one at a time, not after the whole is loaded."""
    if device_map is None:
        return True
    if isinstance(device_map, (dict, int)) or (isinstance(device_map, str) and device_map == "auto"):
        return False
    return as_device(device_map).type == "cpu"


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: the host's available memory for CPU, the free memory of an accelerator."""
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return 1 << 62  # other accelerators: no portable query


def bytes_to_allocate(model, dtype: torch.dtype | None, device: torch.device) -> int:
    """Bytes ``model.to(device, dtype)`` allocates anew: tensors that change dtype or device
    (memory-mapped tensors that stay as they are cost nothing)."""
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        target = dtype if dtype is not None and t.is_floating_point() else t.dtype
        if target != t.dtype or t.device != device:
            total += t.numel() * target.itemsize
    return total


def check_fits(nbytes: int, device: torch.device, what: str) -> None:
    free = available_bytes(device)
    if nbytes > free:
        raise CheckpointError(
            f"loading needs {nbytes / 2**30:.1f} GiB more on {device} but {free / 2**30:.1f} GiB is available; "
            "keep the stored dtype (dtype='auto': a bfloat16 checkpoint stays memory-mapped), use a smaller dtype, "
            "or device_map='auto' to spread the model over the devices", what)


def auto_device_map(model, dtype: torch.dtype | None, max_memory: dict | None = None) -> dict[str, str | int]:
    """accelerate's device map for ``model`` over the accelerators and the CPU (each ``no_split`` part whole)."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_max_memory

    max_memory = get_max_memory(max_memory)
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split(model), dtype=dtype)


def place(model, dtype: torch.dtype | None, device_map=None, max_memory: dict | None = None, where: str = "model"):
    """Convert ``model`` to ``dtype`` and put it where ``device_map`` says, after checking that it fits."""
    if isinstance(device_map, str) and device_map == "auto":
        device_map = auto_device_map(model, dtype, max_memory)
    if isinstance(device_map, dict):
        devices = {str(d) for d in device_map.values()}
        if "disk" in devices:
            raise CheckpointError(f"the model does not fit in memory in {dtype or 'its stored dtype'} "
                                  f"(accelerate's device map sends {sum(d == 'disk' for d in device_map.values())} "
                                  "part(s) to disk); use a smaller dtype or free memory", where)
        if len(devices) == 1:
            device_map = next(iter(device_map.values()))
        else:
            return _dispatch(model, dtype, device_map, where)
    device = as_device(device_map if device_map is not None else _current_device(model))
    check_fits(bytes_to_allocate(model, dtype, device), device, where)
    return model.to(device=device, dtype=dtype)


def _current_device(model) -> torch.device:
    return next(model.parameters()).device


def _dispatch(model, dtype, device_map: dict, where: str):
    """Several devices: each part converted and moved to its own device, then accelerate's hooks
    move every part's inputs to it."""
    from accelerate import dispatch_model

    for name, target in device_map.items():
        part = model.get_submodule(name) if name else model
        device = as_device(target)
        check_fits(bytes_to_allocate(part, dtype, device), device, f"{where} ({name or 'model'})")
        part.to(device=device, dtype=dtype)
    return dispatch_model(model, device_map=device_map)
