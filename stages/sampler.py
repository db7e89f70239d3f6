"""Deterministic, resumable global batches, optionally grouped by length, and their per-rank shards.

Epoch ``e`` draws one permutation from ``torch.Generator().manual_seed(seed + e)``. With
``group_by_length`` the permutation is cut into mega-batches of ``mega_batch_mult *
global_batch_size`` indices, each mega-batch is sorted by length (longest first; ties keep
permutation order), cut into global batches, and the order of all batches is shuffled with the
same generator; the batch holding the longest sample is then moved to the front, so an
out-of-memory shows on the first step. Only the last batch of an epoch can be short
(``drop_last=True`` drops it).

Every process builds the same global batches; ``shard(batch, rank, world_size, micro_batches)``
gives each rank its contiguous share, split into micro-batches for gradient accumulation.
"""
from __future__ import annotations

from typing import Iterator

import torch

from molora.errors import MoLoRAError

__all__ = ["LengthGroupedBatches", "shard", "split_evenly"]


def split_evenly(items: list, parts: int) -> list[list]:
    """``parts`` contiguous pieces whose sizes differ by at most one (the first ones larger)."""
    if parts < 1:
        raise MoLoRAError(f"cannot split into {parts} parts", "shard")
    q, r = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + q + (1 if k < r else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def shard(batch: list[int], rank: int, world_size: int, micro_batches: int = 1) -> list[list[int]]:
    """The ``rank``'s share of a global batch as ``micro_batches`` micro-batches.

    Concatenating rank 0's micro-batches, then rank 1's, ... gives ``batch`` back. The split
    depends only on the arguments. Micro-batches may be empty when the batch is smaller than
    ``world_size * micro_batches`` (only an epoch's short last batch, with ``drop_last=False``).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise MoLoRAError(f"rank {rank} is not in [0, world_size={world_size})", "shard")
    if micro_batches < 1:
        raise MoLoRAError(f"micro_batches must be >= 1, got {micro_batches}", "shard")
    return split_evenly(split_evenly(list(batch), world_size)[rank], micro_batches)


class LengthGroupedBatches:
    """Global batches of dataset indices (see the module docstring).

    ``iter(obj)`` yields the rest of the current epoch; ``batches()`` runs forever across
    epochs. ``state_dict()`` / ``load_state_dict()`` capture ``{"epoch", "position"}`` (batches
    already handed out in that epoch), so a restored object continues with exactly the batch
    that would have come next.
    """

    def __init__(self, lengths: list[int], global_batch_size: int, seed: int, group_by_length: bool = True,
                 drop_last: bool = False, mega_batch_mult: int = 50):
        if global_batch_size < 1:
            raise MoLoRAError(f"global_batch_size must be >= 1, got {global_batch_size}", "sampler")
        if mega_batch_mult < 1:
            raise MoLoRAError(f"mega_batch_mult must be >= 1, got {mega_batch_mult}", "sampler")
        self.lengths = [int(n) for n in lengths]
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.group_by_length = group_by_length
        self.drop_last = drop_last
        self.mega_batch_mult = int(mega_batch_mult)
        if len(self) == 0:
            raise MoLoRAError(f"{len(self.lengths)} samples make no batch of {global_batch_size}"
                              + (" with drop_last=True" if drop_last else ""), "sampler")
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def __len__(self) -> int:
        n, b = len(self.lengths), self.global_batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All global batches of ``epoch``, in order (a pure function of seed, epoch and lengths)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        b = self.global_batch_size
        if self.group_by_length:
            mega = self.mega_batch_mult * b
            ordered = []
            for s in range(0, len(perm), mega):
                ordered += sorted(perm[s:s + mega], key=lambda i: -self.lengths[i])  # stable
            batches = [ordered[s:s + b] for s in range(0, len(ordered), b)]
            if self.drop_last and len(batches[-1]) < b:
                batches.pop()
            order = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[k] for k in order]
            longest = max(range(len(batches)), key=lambda k: (max(self.lengths[i] for i in batches[k]), -k))
            batches.insert(0, batches.pop(longest))
        else:
            batches = [perm[s:s + b] for s in range(0, len(perm), b)]
            if self.drop_last and len(batches[-1]) < b:
                batches.pop()
        self._cache = (epoch, batches)
        return batches

    def _normalise(self) -> None:
        while self.position >= len(self):
            self.epoch += 1
            self.position -= len(self)

    def __iter__(self) -> Iterator[list[int]]:
        self._normalise()
        epoch = self.epoch
        batches = self.epoch_batches(epoch)
        while self.epoch == epoch and self.position < len(batches):
            batch = batches[self.position]
            self.position += 1  # counted before handing out: state_dict() now points past it
            yield list(batch)

    def batches(self) -> Iterator[list[int]]:
        """Global batches forever, epoch after epoch, continuing from the current state."""
        while True:
            yield from self

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or position < 0:
            raise MoLoRAError(f"invalid sampler state {state!r}", "sampler")
        self.epoch, self.position = epoch, position

    shard = staticmethod(shard)
