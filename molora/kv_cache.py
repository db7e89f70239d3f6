"""A KV cache that grows in place: each layer's keys and values live in one buffer allocated at
prefill with room for the tokens still to come, and a decode step writes its new column into
that buffer instead of concatenating the whole cache into a new tensor (transformers'
``DynamicCache`` copies every layer's full cache at every step).

It is a ``DynamicCache`` in every other respect: ``keys`` / ``values`` are views of the filled
part, so attention sees exactly the tensors a ``DynamicCache`` would hold, with the same
masks and the same numbers. When the reserved room runs out the buffer doubles.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    def __init__(self, reserve: int = 0):
        super().__init__()
        self.reserve = reserve
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._n = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, t = self._n, key_states.shape[-2]
        if self._k is None or n + t > self._k.shape[-2]:
            self._grow(key_states, value_states, n + t)
        self._k[:, :, n:n + t].copy_(key_states)
        self._v[:, :, n:n + t].copy_(value_states)
        self._n = n + t
        self.keys, self.values = self._k[:, :, :n + t], self._v[:, :, :n + t]
        return self.keys, self.values

    def _grow(self, key_states, value_states, need: int) -> None:
        cap = max(need + self.reserve, 2 * (self._k.shape[-2] if self._k is not None else 0))
        k = key_states.new_empty(*key_states.shape[:2], cap, key_states.shape[-1])
        v = value_states.new_empty(*value_states.shape[:2], cap, value_states.shape[-1])
        if self._n:
            k[:, :, :self._n].copy_(self._k[:, :, :self._n])
            v[:, :, :self._n].copy_(self._v[:, :, :self._n])
        self._k, self._v = k, v

    def reset(self) -> None:
        super().reset()
        self._k = self._v = None
        self._n = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("GrowingCache does not support crop (use DynamicCache)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("GrowingCache does not support beam expansion (use DynamicCache)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("GrowingCache does not support batch selection (use DynamicCache)")


class GrowingCache(DynamicCache):
    """``DynamicCache`` whose layers reserve ``reserve`` extra positions at prefill (e.g. the
    ``max_new_tokens`` of a generate call)."""

    def __init__(self, reserve: int = 0):
        super().__init__()
        self.layer_class_to_replicate = lambda: GrowingLayer(reserve)
