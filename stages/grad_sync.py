"""How one process's gradients meet the other processes' in replicated training (``training.parallel=dp``).

``training.grad_sync``:

ddp     torch's ``DistributedDataParallel`` around the stage's loss: gradients are all-reduced in
        buckets (~25 MB) while backward still runs, each bucket as soon as its gradients are ready.
        Micro-batches before the last run under ``no_sync`` (they accumulate locally; the last one's
        backward reduces the sum). ``find_unused_parameters``: a process whose micro-batches have no
        audio row never reaches the audio encoder's tensors, another process's may; the first then
        contributes zeros for them (exact: x + 0 = x). The model's ``touch_all`` would do the same by
        adding zero times every unused tensor to the graph, but it turns the frozen-row split off
        (text-only rows of a frozen backbone would pay a backward again) and runs every adapter on
        no token; finding the unused tensors is one walk of the autograd graph per step.
manual  the hand-written average after backward (``Distributed.average_gradients``): no overlap;
        kept as the oracle DDP is tested against, and as a fallback.

Both give the mean over processes of what each process's backward left, and with two processes they
give the same bits: DDP multiplies each gradient by 1/2 as it copies it into its bucket, then sums;
the hand-written path sums, then halves; halving is exact in binary floating point (short of
subnormal gradients), so both are ``(g0 + g1) / 2`` and, with the loss scaled by the process count
(``backward``), the sum a one-process run accumulates (a + b = b + a: tested bit for bit). With more
processes the collective sums the N contributions in an order of its own (per bucket position), not
the order a one-process run accumulates its micro-batches in: the results then agree to float32
summation rounding, at most (N - 1) * 2**-24 * sum |contribution| per element, and for N not a power
of two ``1 / N`` rounds once more (2**-24 relative).

A tensor no process reached in a step keeps no gradient through DDP, as in a one-process run (the
optimiser skips it); the hand-written average gives it zeros (so AdamW still moves it by its
momentum): the two agree on every gradient value, and the oracle test reads a missing one as zeros.

Only the trainable tensors are DDP's: the frozen backbone is never broadcast, bucketed or reduced;
their gradients are views into DDP's buckets (``gradient_as_bucket_view``: no second copy of them).
The wrapper is rebuilt at each sub-step boundary (the freeze plan changes which tensors train);
``run.model`` stays the bare model, so checkpoints and ``final/`` keep their names (no ``module.``).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

__all__ = ["GRAD_SYNCS", "StageLoss", "GradSync"]

GRAD_SYNCS = ("ddp", "manual")


class StageLoss(nn.Module):
    """A stage's loss as a module (what DDP wraps: its forward is the whole forward of a micro-batch,
    two for a DPO pair). ``batch=None`` (a process whose last micro-batch has no row left) and a loss
    no trainable tensor reaches still give a loss that reaches one trainable tensor, times zero: on
    the micro-batch that reduces, every process must run a backward, or the others wait for it."""

    def __init__(self, model: nn.Module, loss_fn, ctx):
        super().__init__()
        self.model, self.loss_fn, self.ctx = model, loss_fn, ctx

    def forward(self, batch: dict | None, join: bool = False):
        if batch is None:
            loss, metrics = None, {}
        else:
            loss, metrics = self.loss_fn(self.model, batch, self.ctx)
        if join and (loss is None or not loss.requires_grad):
            anchor = next(p for p in self.model.parameters() if p.requires_grad)
            zero = 0.0 * anchor.sum()
            loss = zero if loss is None else loss + zero.to(loss.dtype)
        return loss, metrics


class GradSync:
    """One process's side of a step: every micro-batch's forward and backward, and the gradients'
    average over processes (see the module docstring). ``backward`` then ``reduce``."""

    def __init__(self, model: nn.Module, loss_fn, ctx, dist, mode: str = "ddp", sharded: bool = False):
        if mode not in GRAD_SYNCS:
            raise ValueError(f"grad_sync must be one of {GRAD_SYNCS}, got {mode!r}")
        self.dist, self.loss_fn, self.ctx, self.model = dist, loss_fn, ctx, model
        # a plain process: nothing to average; FSDP2 reduce-scatters the gradients itself. A launched
        # run of one process wraps DDP too (its reduction over one process leaves the gradients as they are)
        self.mode = "none" if sharded or not dist.launched else mode
        self.ddp = self._wrap(model) if self.mode == "ddp" else None

    def _wrap(self, model: nn.Module):
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = StageLoss(model, self.loss_fn, self.ctx)
        # only the trainable tensors are DDP's: the frozen ones and the buffers (constants: CMVN
        # statistics, ...) are neither broadcast at the start nor at each forward, nor bucketed. Every
        # process built the same model from the same seed / folder; the broadcast of what trains checks
        # the shapes and makes the start the same on every process
        frozen = [f"model.{n}" for n, p in model.named_parameters() if not p.requires_grad]
        module._ddp_params_and_buffers_to_ignore = frozen + [n for n, _ in module.named_buffers()]  # read by DDP's init
        return DDP(module, find_unused_parameters=True, gradient_as_bucket_view=True)

    def close(self) -> None:
        """Take this wrapper's hooks off the parameters (a new sub-step builds its own)."""
        if self.ddp is not None:
            self.ddp._remove_autograd_hooks()
            self.ddp = None

    def backward(self, micro: list, total: float, *, move=lambda b: b, autocast=nullcontext,
                 scaler=None, stand_in=None) -> tuple[float, dict]:
        """Forward and backward of this process's micro-batches (None: every row of it was skipped),
        each loss divided by ``total`` (the step's count over every process) and multiplied by the
        process count (the average over processes then gives the global mean). Returns the sum of the losses and each metric
        summed over micro-batches / their number. Through DDP, every micro-batch but the last runs
        under ``no_sync`` and the last always runs, with a loss that reaches a trainable tensor.
        ``stand_in`` (FSDP2): gives a batch to run times zero in place of a skipped micro-batch, so every
        process enters the same collectives."""
        loss_sum, extra = 0.0, {}
        for i, b in enumerate(micro):
            last = i == len(micro) - 1
            substitute = b is None and stand_in is not None
            if b is None and not substitute and not (self.ddp is not None and last):
                continue
            with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext():
                with autocast():
                    loss, m = self.loss(move(stand_in()) if substitute else (None if b is None else move(b)), last)
                scaled = loss * 0.0 if substitute else loss / total * self.dist.world
                if scaled.requires_grad:  # rows that reach no trainable weight contribute no gradient
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if b is None:
                continue
            loss_sum += float(loss.detach())
            for k, v in m.items():
                extra[k] = extra.get(k, 0.0) + v / len(micro)
        return loss_sum, extra

    def loss(self, batch: dict | None, last: bool):
        """(loss, metrics) of one micro-batch; through DDP, the last one's loss always reaches a
        trainable tensor (``StageLoss``)."""
        if self.ddp is not None:
            return self.ddp(batch, join=last)
        return self.loss_fn(self.model, batch, self.ctx)

    def reduce(self, trainable: list[torch.nn.Parameter]) -> None:
        """After every micro-batch's backward: the hand-written average (DDP has reduced during backward)."""
        if self.mode == "manual":
            self.dist.average_gradients(trainable)
