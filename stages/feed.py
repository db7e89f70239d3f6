"""Each training step's micro-batches, optionally collated one step ahead.

``StepFeed.get(step)`` hands the trainer the step's micro-batches (this process's share of the
sampler's next global batch), the sampler's state right after that batch and the length of the
skip list once it was collated: what a checkpoint written after the step must record. With
``prefetch`` (``training.prefetch``) the next step's batch is collated in a background thread while
this step computes (loading media, HD crops, log-mel, tokenising: a quarter of a small model's step on
CPU, and time an accelerator would otherwise wait). The batches are the same either way: the
sampler is read in order on the calling thread, SpecAugment draws from per-clip generators seeded
by the step (``Collator(..., augment_seed=)``), not from the global RNG, and one worker collates
the steps in order, so the skip list grows in step order.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["StepData", "StepFeed", "step_seed"]


def step_seed(seed: int, step: int) -> int:
    """The SpecAugment seed of a step of a run seeded ``seed``."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest(), "little") >> 1


@dataclass
class StepData:
    micro: list  # micro-batches (None: every sample of it was skipped)
    sampler_state: dict  # the sampler right after this step's batch
    skipped: int  # len(collator.skipped) once this step's batches were collated


class StepFeed:
    def __init__(self, samples: list, sampler: Any, collator: Any, *, paired: bool, rank: int, world: int,
                 grad_accum: int, seed: int, last_step: int, prefetch: bool):
        self.samples, self.sampler, self.collator = samples, sampler, collator
        self.collate = collator.collate_preference if paired else collator
        self.rank, self.world, self.grad_accum, self.seed, self.last_step = rank, world, grad_accum, seed, last_step
        self.batches = sampler.batches()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="molora-collate") if prefetch else None
        self.pending: tuple[int, Future, dict] | None = None

    def _take(self) -> tuple[list[int], dict]:
        idx = next(self.batches)
        return idx, self.sampler.state_dict()

    def _build(self, step: int, idx: list[int]) -> tuple[list, int]:
        seed = step_seed(self.seed, step)
        micro = [self.collate([self.samples[j] for j in ids], augment_seed=seed)
                 for ids in self.sampler.shard(idx, self.rank, self.world, self.grad_accum)]
        return micro, self.collator.num_skipped

    def get(self, step: int) -> StepData:
        """Step ``step``'s data (steps are asked for in order); starts collating the next one."""
        if self.pending is not None:
            at, future, state = self.pending
            self.pending = None
            if at != step:
                raise RuntimeError(f"the feed prepared step {at}, step {step} was asked for")
            micro, skipped = future.result()
        else:
            idx, state = self._take()
            micro, skipped = self._build(step, idx)
        if self.pool is not None and step + 1 < self.last_step:
            idx, nxt = self._take()
            self.pending = (step + 1, self.pool.submit(self._build, step + 1, idx), nxt)
        return StepData(micro, state, skipped)

    def wait(self) -> None:
        """Let the collation in flight finish (before anything else uses the processor)."""
        if self.pending is not None:
            self.pending[1].exception()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
