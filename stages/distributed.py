"""The collective operations the trainer needs, over accelerate's process state.

Data parallelism is explicit: every process takes its shard of each global batch (the same global
batch whatever the number of processes), losses are summed over tokens and divided by the token
count of the whole global batch, and gradients are averaged across processes (torch DDP during
backward, ``grad_sync.py``; or ``average_gradients`` here after it: accelerate's ``reduce``, in flat
buckets, the oracle DDP is tested against). One process and N processes therefore take the same
steps: with the loss scaled by the process count and the average a power of two, the gradients
meet as ``g0 + g1`` either way, bit for bit with two processes (with more, the reduction's order of
summation rounds differently).
"""
from __future__ import annotations

import torch

__all__ = ["Distributed"]


class Distributed:
    def __init__(self, cpu: bool = False):
        from accelerate import PartialState

        self.state = PartialState(cpu=cpu)
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.device = self.state.device

    @property
    def launched(self) -> bool:
        """Whether this process belongs to a process group (torchrun / accelerate launch, even of one
        process): the distributed code paths (FSDP2, DDP) run then; a plain process runs without them."""
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        from accelerate.utils import reduce

        return reduce(torch.tensor(values, dtype=torch.float64, device=self.device), reduction="sum").tolist()

    def average_gradients(self, params: list[torch.nn.Parameter], bucket_elements: int = 8_000_000) -> None:
        """Mean of every gradient over processes, one collective per bucket of ~32 MB."""
        if self.world == 1:
            return
        from accelerate.utils import reduce

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        bucket, size = [], 0
        for g in grads + [None]:
            if g is not None:
                bucket.append(g)
                size += g.numel()
            if bucket and (g is None or size > bucket_elements):
                flat = reduce(torch.cat([b.reshape(-1) for b in bucket]), reduction="mean")
                off = 0
                for b in bucket:
                    b.copy_(flat[off: off + b.numel()].view_as(b))
                    off += b.numel()
                bucket, size = [], 0
        for p, g in zip(params, grads):
            p.grad = g
