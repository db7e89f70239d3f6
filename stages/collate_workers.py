"""Collation in ``torch.utils.data.DataLoader`` worker processes (``training.collate_workers``).

The sampler stays in the training process: ``StepFeed`` reads it in order and hands the loader one
key per step, ``(step, micro index lists)``. A worker turns a key into that step's micro-batches
with its own copy of the collator (and so of the processor): media loading, HD crops, log-mel,
tokenising, SpecAugment seeded by the step (``step_seed``). Each step starts with an empty skip
list in the worker, and the worker returns what it skipped with the batches (``StepResult``);
the loader gives the results back in step order and the feed merges the skip records into the
training process's collator in that order, listed once each as the collator lists them. So the
micro-batches, the sampler positions and the skip list are those of in-process collation,
whatever the number of workers.

An error in a worker (bad input under ``strict``, an unreadable file, a bug) comes back as the
step's result and is raised, as the same exception, when the trainer asks for that step, with
the worker's traceback as a note. Workers ignore SIGINT and SIGTERM: Ctrl-C at a terminal reaches
the whole process group, and the training process stops them itself when it stops between steps
(``molora.signals.interrupts_between``); a worker whose parent is gone exits by itself.
"""
from __future__ import annotations

import copy
import os
import pickle
import signal
import traceback
from dataclasses import dataclass, field

import torch

from .feed import collate_step

__all__ = ["StepResult", "StepCollation", "start_loader"]


@dataclass
class StepResult:
    step: int
    micro: list | None  # None when collation failed
    skipped: list[dict] = field(default_factory=list)  # this step's skip records, in the order met
    error: BaseException | None = None


class StepCollation(torch.utils.data.Dataset):
    """Map-style dataset over steps: ``dataset[(step, shards)]`` is the step's ``StepResult``."""

    def __init__(self, samples: list, collator, *, paired: bool, seed: int):
        self.samples, self.collator, self.paired, self.seed = samples, collator, paired, seed

    def __getitem__(self, key: tuple[int, list[list[int]]]) -> StepResult:
        step, shards = key
        coll = self.collator
        coll.skipped = []  # this step's records only: the training process merges them in step order
        try:
            micro = collate_step(coll.collate_preference if self.paired else coll, self.samples, step, shards,
                                 self.seed)
        except Exception as e:  # noqa: BLE001 - raised in the training process, at this step
            return StepResult(step, None, list(coll.skipped), _portable(e))
        return StepResult(step, micro, list(coll.skipped))


def _portable(err: Exception) -> Exception:
    """``err`` with the worker's traceback as a note, or, when it cannot travel back to the training
    process (its contents do not pickle, or its class cannot be rebuilt from its reduction), a
    RuntimeError saying what it was."""
    where = "".join(traceback.format_exception(err))
    try:
        pickle.dumps(err)
        copy.deepcopy(err)  # rebuilt through the same __reduce_ex__ the receiving side calls
    except Exception:  # noqa: BLE001
        err = RuntimeError(f"{type(err).__name__}: {err}")
    err.add_note(f"raised in a collation worker:\n{where}")
    return err


HELD = {signal.SIGINT, signal.SIGTERM}


def _quiet_worker(_worker_id: int) -> None:
    # the training process decides when to stop (between steps) and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)  # blocked since the fork (start_loader): now ignored
    # one thread per worker, as DataLoader sets torch's (and no fork warning from a Hugging Face tokenizer
    # the training process used before the workers started)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _as_is(result: StepResult) -> StepResult:
    return result


def start_loader(dataset: StepCollation, keys, workers: int):
    """An iterator over the ``StepResult`` of each key of ``keys`` (read lazily, in the training
    process), collated by ``workers`` processes and returned in order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=keys, num_workers=workers,
                                         collate_fn=_as_is, worker_init_fn=_quiet_worker)
    # A Ctrl-C at a terminal reaches the workers too. Until _quiet_worker has run, a worker would die of
    # it, so SIGINT / SIGTERM are blocked while the workers start: they inherit the mask and unblock once
    # both signals are ignored; one that reached the training process meanwhile is delivered when it
    # unblocks below.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
