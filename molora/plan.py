"""The execution plan of one forward call: which fast paths it takes, chosen from the batch and
the device, each behind one public switch (``MoLoRAModel.fast_paths``).

Every fast path gives the numbers of the plain path (float64: to rounding; tested alone and in
combination, gradients included, in ``tests/test_execution_plan.py``); turning one off never
changes a result beyond rounding, only time and memory.

==================  =====================================================================
switch              what it does, and when it applies
==================  =====================================================================
pack                padded batch with labels, loss only, no cache: its real tokens packed
                    into one ``[1, N]`` sequence in adapter order, attention per row
                    (``molora/packing.py``; batches the collator packed take the same path)
packed_attention    the kernel for packed rows: ``auto`` (FlashAttention's varlen kernel
                    when installed on CUDA in half precision, else compiled FlexAttention
                    with the rows' document mask on CUDA where torch can compile it and
                    attention has no dropout, else ``rows``), ``rows`` (SDPA per row, on
                    views), ``block`` (one SDPA, block-diagonal mask), ``flex`` /
                    ``flex_eager`` (FlexAttention compiled / uncompiled; on the CPU forward
                    only: the plan refuses them there when autograd is on)
length_groups       padded prefill whose rows differ a lot in length: attention per bucket
drop_padding        padded batch: linears, norms and MLPs run on the real tokens only
narrow              the last layer's ``o_proj`` and MLP run only on the positions that are
                    read (``logits_to_keep``, or the labelled ones with ``return_logits=False``)
split_frozen_rows   loss-only training forward with a frozen backbone: text-only rows (no
                    adapter, no media: no trainable weight reaches their loss) run without
                    autograd beside the others (``molora/frozen_rows.py``)
fused_lora          routed LoRA linears whose adapters own contiguous spans run as one
                    autograd node (``adapters/lora_fused.py``), under autocast too; off
                    over a quantised base (the kernel reads the dense base weight)
merged_inference    (off by default) inference where every token uses one adapter: one
                    matmul per linear with a cached merged weight ``W + s * B @ A``; off
                    over a quantised base (a merged dense weight would undo the quantisation)
==================  =====================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .attention import FLEX_BACKENDS, PACKED_BACKENDS, flash_available, flex_available

__all__ = ["FastPaths", "ExecutionPlan", "choose_plan", "lora_paths", "packed_kernel"]


@dataclass
class FastPaths:
    """The switches (see the module docstring). ``FastPaths.off()``: the plain path everywhere."""

    pack: bool = True
    packed_attention: str = "auto"  # auto | rows | block | flex | flex_eager | flash
    length_groups: bool = True
    drop_padding: bool = True
    narrow: bool = True
    split_frozen_rows: bool = True
    fused_lora: bool = True
    merged_inference: bool = False

    @classmethod
    def off(cls) -> "FastPaths":
        return cls(pack=False, packed_attention="rows", length_groups=False, drop_padding=False, narrow=False,
                   split_frozen_rows=False, fused_lora=False, merged_inference=False)

    def replace(self, **changes) -> "FastPaths":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown fast path(s) {sorted(unknown)}; known: {[f.name for f in fields(self)]}")
        return FastPaths(**{**self.__dict__, **changes})


@dataclass(frozen=True)
class ExecutionPlan:
    """What one forward call does (every field decided before the first layer runs)."""

    packed: bool = False  # the decoder runs on [1, N] packed rows (the batch came packed, or ``pack``)
    pack: bool = False  # the model packs a padded batch itself
    attention: str = "padded"  # padded | length_groups | packed
    packed_backend: str = "rows"
    drop_padding: bool = False
    narrow: bool = False
    split_frozen_rows: bool = False
    fused_lora: bool = False
    merged: bool = False
    touch_all: bool = False  # sharded training: every trainable tensor joins every process's graph


@dataclass(frozen=True)
class BatchFacts:
    """What the plan depends on, read off one call's inputs."""

    packed_input: bool  # the batch arrives packed (``cu_seqlens`` given)
    padded: bool  # some tokens are padding
    training_loss: bool  # labels, loss only (no logits), no cache, no precomputed route
    reads_subset: bool  # only some positions' final states are read (logits_to_keep / labels)
    prefill: bool  # no cache yet (or an empty one)
    seq_len: int
    grad: bool  # autograd is on
    frozen_rows_possible: bool  # text-only rows beside others, backbone frozen


def packed_kernel(switch: str, device: torch.device, dtype: torch.dtype, *, grad: bool,
                  attention_dropout: float = 0.0) -> str:
    """The kernel of packed rows for ``fast_paths.packed_attention == switch``: ``auto`` picks
    FlashAttention (installed, CUDA, half precision), else compiled FlexAttention (CUDA, torch can
    compile it, no attention dropout, not float64), else ``rows``. A FlexAttention kernel asked for
    by name where it cannot run (attention dropout; autograd on the CPU, where torch has no
    FlexAttention backward) is refused."""
    if switch not in ("auto", *PACKED_BACKENDS):
        raise ValueError(f"fast_paths.packed_attention must be auto or one of {PACKED_BACKENDS}")
    if switch == "auto":
        if flash_available(device, dtype):
            return "flash"
        if flex_available(device) and not attention_dropout and dtype != torch.float64:
            return "flex"
        return "rows"
    if switch in FLEX_BACKENDS and attention_dropout:
        raise ValueError(f"fast_paths.packed_attention={switch!r}: FlexAttention has no attention dropout "
                         f"(attention_dropout={attention_dropout}); use rows or block")
    if switch in FLEX_BACKENDS and grad and device.type in ("cpu", "mps"):
        raise ValueError(f"fast_paths.packed_attention={switch!r}: torch's FlexAttention has no backward on "
                         f"{device.type}; use rows or block there (or run without autograd)")
    return switch


def lora_paths(switches: FastPaths, *, grad: bool, quantized_base: bool = False) -> tuple[bool, bool]:
    """(fused_lora, merged) of the routed LoRA linears: both read the dense base weight, so neither runs
    over a quantised base (``molora/quantization.py``); the plain path (base layer, then the adapters) does."""
    return (switches.fused_lora and not quantized_base,
            switches.merged_inference and not grad and not quantized_base)


def choose_plan(switches: FastPaths, facts: BatchFacts, device: torch.device, dtype: torch.dtype, *,
                checkpointing: bool = False, touch_all: bool = False, attention_dropout: float = 0.0,
                quantized_base: bool = False) -> ExecutionPlan:
    """``attention_dropout``: the decoder's, when it applies (training mode), else 0; ``quantized_base``:
    the decoder's base linears are quantised (`lora_paths`)."""
    fused_lora, merged = lora_paths(switches, grad=facts.grad, quantized_base=quantized_base)
    pack = switches.pack and facts.training_loss and facts.padded and not facts.packed_input
    packed = facts.packed_input or pack
    # the kernel is refused only where packed rows would run it
    backend = packed_kernel(switches.packed_attention, device, dtype, grad=facts.grad and packed,
                            attention_dropout=attention_dropout if packed else 0.0)
    if packed:
        attention = "packed"
    elif switches.length_groups and facts.prefill and facts.padded and facts.seq_len >= 32:
        attention = "length_groups"  # the decoder falls back to padded when grouping saves too little
    else:
        attention = "padded"
    return ExecutionPlan(
        packed=packed, pack=pack, attention=attention, packed_backend=backend,
        drop_padding=switches.drop_padding and facts.padded and not packed,
        # activation checkpointing recomputes layers outside this call's view of which outputs are read
        narrow=switches.narrow and facts.reads_subset and not checkpointing,
        split_frozen_rows=switches.split_frozen_rows and facts.training_loss and facts.grad
        and facts.frozen_rows_possible and not touch_all,
        fused_lora=fused_lora,
        merged=merged,
        touch_all=touch_all,
    )
