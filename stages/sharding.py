"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the trainer: parameters, gradients and
optimiser state sharded over the processes, one unit per decoder layer plus the root (which holds
the encoders, projectors and embeddings). The encoders are not units of their own: which of them
runs depends on the rows a process got (a process with no audio row never calls the conformer), and
FSDP needs every process to enter the same units in the same order. Gradients are reduce-scattered
by FSDP itself (the loop's own gradient averaging is off).

Checkpoints go through ``torch.distributed.checkpoint`` (DCP): every process writes its own shard of
the trained parameters and of their optimiser state into ``<checkpoint>/sharded/``; the frozen
weights are neither gathered nor written (a resumed run rebuilds them from its starting weights).
DCP reshards on load, so a checkpoint written by N processes resumes on M, sharded or not. ``final/``
gathers the trained parameters only; the frozen ones come from the starting weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

SHARDED_DIR = "sharded"  # the DCP folder inside a checkpoint written by a sharded run
WEIGHTS, OPTIMIZER = "model", "optimizer"  # its two top-level keys


def shard_model(model, dist) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world,))
    for unit in model.language_model.layers:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.touch_all = True


def reshard(model) -> None:
    """Every FSDP unit back to its shards. FSDP2 keeps the root unit gathered after a forward (for the
    backward that usually follows): a forward after its shards were changed in place would otherwise
    read the old gathered copy. A no-op for a model that is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def _sharded_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=False, **kw)


def load_model_state(model, state: dict[str, torch.Tensor]) -> None:
    """Full tensors (an unsharded checkpoint's) into a sharded model: each process keeps its shards."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(strict=False))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_options())


def _trained_state(model, names: list[str]) -> dict[str, torch.Tensor]:
    """The parameters named ``names`` as the model holds them: DTensors (this process's shards) in a
    sharded model, plain tensors otherwise; nothing is gathered or copied."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard(model)
    wanted = set(names)
    return {k: v for k, v in get_model_state_dict(model, options=_sharded_options()).items() if k in wanted}


def save_sharded(folder: Path, model, optimizer, names: list[str]) -> None:
    """DCP checkpoint of the parameters ``names`` and of ``optimizer``'s state: every process writes its
    own shards (a collective: every process calls it with the same ``folder``)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = {WEIGHTS: _trained_state(model, names),
             OPTIMIZER: get_optimizer_state_dict(model, optimizer, options=_sharded_options())}
    dcp.save(state, checkpoint_id=str(folder))


def load_sharded_weights(folder: Path, model, names: list[str]) -> None:
    """The parameters ``names`` from a DCP checkpoint, resharded for this run (any number of
    processes; an unsharded model reads the full tensors)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    state = _trained_state(model, names)
    dcp.load({WEIGHTS: state}, checkpoint_id=str(folder))
    set_model_state_dict(model, state, options=_sharded_options(strict=False))


def load_sharded_optimizer(folder: Path, model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_sharded_options())
    dcp.load({OPTIMIZER: state}, checkpoint_id=str(folder))
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_sharded_options())


def gathered_trained(model, names: list[str], keep: bool) -> dict[str, torch.Tensor]:
    """The parameters ``names`` in full on CPU, one at a time (a collective; ``keep``: this process
    keeps them, the others drop each after its gather). The frozen parameters are not gathered."""
    out = {}
    for k, v in _trained_state(model, names).items():
        full = v.full_tensor() if hasattr(v, "full_tensor") else v
        if keep:
            out[k] = full.detach().cpu()
    return out


def sharded_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Each trained tensor's full shape in a DCP checkpoint, from its metadata (no tensor is read)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(folder)).read_metadata()
    prefix = WEIGHTS + "."
    return {k[len(prefix):]: tuple(v.size) for k, v in meta.state_dict_metadata.items()
            if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)}


def sharded_problem(folder: Path) -> tuple[str, str] | None:
    """(file, reason) of the first missing or cut-short file of a DCP checkpoint, from its metadata (every
    byte range it records must be there); None when whole."""
    from torch.distributed.checkpoint import FileSystemReader

    meta_file = folder / ".metadata"
    if not meta_file.is_file():
        return f"{SHARDED_DIR}/.metadata", "missing"
    try:
        meta = FileSystemReader(str(folder)).read_metadata()
    except Exception as e:  # a pickle cut short
        return f"{SHARDED_DIR}/.metadata", f"unreadable ({type(e).__name__})"
    ends: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        path = folder / name
        if not path.is_file():
            return f"{SHARDED_DIR}/{name}", "missing"
        if path.stat().st_size < end:
            return f"{SHARDED_DIR}/{name}", f"cut short ({path.stat().st_size} of {end} bytes)"
    return None
