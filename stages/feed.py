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

With ``workers`` > 0 (``training.collate_workers``) the steps are collated in that many
``DataLoader`` worker processes instead (``stages/collate_workers.py``), up to two steps per worker
ahead of the trainer (``training.prefetch`` is then not used): the sampler is still read here, in
order, and each step's skip records are merged here in step order, so the batches, the sampler
states and the skip list are the same as with in-process collation.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["StepData", "StepFeed", "step_seed", "collate_step"]


def step_seed(seed: int, step: int) -> int:
    """The SpecAugment seed of a step of a run seeded ``seed``."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest(), "little") >> 1


def collate_step(collate, samples: list, step: int, shards: list[list[int]], seed: int) -> list:
    """Step ``step``'s micro-batches, one per index list (None where every row was skipped)."""
    augment_seed = step_seed(seed, step)
    return [collate([samples[j] for j in ids], augment_seed=augment_seed) for ids in shards]


@dataclass
class StepData:
    micro: list  # micro-batches (None: every sample of it was skipped)
    sampler_state: dict  # the sampler right after this step's batch
    skipped: int  # len(collator.skipped) once this step's batches were collated


class StepFeed:
    def __init__(self, samples: list, sampler: Any, collator: Any, *, paired: bool, rank: int, world: int,
                 grad_accum: int, seed: int, last_step: int, prefetch: bool, workers: int = 0):
        self.samples, self.sampler, self.collator = samples, sampler, collator
        self.paired = paired
        self.collate = collator.collate_preference if paired else collator
        self.rank, self.world, self.grad_accum, self.seed, self.last_step = rank, world, grad_accum, seed, last_step
        self.batches = sampler.batches()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="molora-collate") if prefetch and not workers else None
        self.pending: tuple[int, Future, dict] | None = None
        self.workers = workers
        self.loader = None  # the worker processes' results, started at the first step asked for
        # step -> (the sampler after its batch, its micro index lists): the workers read ahead
        self.ahead: dict[int, tuple[dict, list[list[int]]]] = {}

    def _take(self) -> tuple[list[int], dict]:
        idx = next(self.batches)
        return idx, self.sampler.state_dict()

    def _shards(self, idx: list[int]) -> list[list[int]]:
        return self.sampler.shard(idx, self.rank, self.world, self.grad_accum)

    def _build(self, step: int, idx: list[int]) -> tuple[list, int]:
        micro = collate_step(self.collate, self.samples, step, self._shards(idx), self.seed)
        return micro, self.collator.num_skipped

    def _keys(self, first: int):
        """``(step, micro index lists)`` for every step from ``first``, the sampler read as the
        loader asks (its state after each batch kept for the step's checkpoint)."""
        for step in range(first, self.last_step):
            idx, state = self._take()
            self.ahead[step] = (state, self._shards(idx))
            yield step, self.ahead[step][1]

    def _from_workers(self, step: int) -> StepData:
        from .collate_workers import StepCollation, start_loader

        if self.loader is None:
            dataset = StepCollation(self.samples, self.collator, paired=self.paired, seed=self.seed)
            self.loader = start_loader(dataset, self._keys(step), self.workers)
        try:
            result = next(self.loader)
        except StopIteration:
            raise RuntimeError(f"the feed has no step {step} (the run ends at step {self.last_step})") from None
        except Exception as e:  # noqa: BLE001 - the workers return their errors: this is a worker gone
            # (killed, out of memory, a crash in native code) with or before the step's result
            _, shards = self.ahead.get(step, ({}, []))
            rows = ", ".join(str(self.samples[j].source) for ids in shards for j in ids)
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise RuntimeError(f"a collation worker stopped while step {step} was collated (rows: {rows}): {why}; "
                               "training.collate_workers=0 collates in this process") from e
        if result.step != step:
            raise RuntimeError(f"the feed prepared step {result.step}, step {step} was asked for")
        for entry in result.skipped:  # in step order, each listed once, as the collator lists them
            if entry not in self.collator.skipped:
                self.collator.skipped.append(entry)
        if result.error is not None:
            raise result.error
        return StepData(result.micro, self.ahead.pop(step)[0], self.collator.num_skipped)

    def get(self, step: int) -> StepData:
        """Step ``step``'s data (steps are asked for in order); starts collating the next one."""
        if self.workers:
            return self._from_workers(step)
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
        """Stop collating: the thread, or the worker processes (ended before this returns)."""
        if self.loader is not None:
            loader, self.loader = self.loader, None
            stop = getattr(loader, "_shutdown_workers", None)  # what its __del__ calls; then, not at collection
            if stop is not None:
                stop()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
