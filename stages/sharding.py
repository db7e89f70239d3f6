"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the trainer: parameters, gradients and
optimiser state sharded over the processes, one unit per decoder layer plus the root (which holds
the encoders, projectors and embeddings). The encoders are not units of their own: which of them
runs depends on the rows a process got (a process with no audio row never calls the conformer), and
FSDP needs every process to enter the same units in the same order. Gradients are reduce-scattered by FSDP itself (the loop's own gradient
averaging is off), and checkpoints hold full (gathered) tensors, so a sharded run resumes from
its checkpoints and writes the same ``final/`` model directory as an unsharded one.
"""
from __future__ import annotations

import torch


def shard_model(model, dist) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world,))
    for unit in model.language_model.layers:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.touch_all = True


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def full_model_state(model) -> dict[str, torch.Tensor]:
    """Every tensor gathered in full on rank 0 (a collective: all ranks call it; others get {})."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def load_model_state(model, state: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(strict=False))


def full_optimizer_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def load_optimizer_state(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_options())
