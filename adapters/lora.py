"""Multi-adapter LoRA linear layer with per-sample routing (peft's layout: dicts keyed by adapter).

State-dict keys follow peft / the official Phi-4-multimodal checkpoint:
``<module>.base_layer.weight``, ``<module>.lora_A.<adapter>.weight``, ``<module>.lora_B.<adapter>.weight``.
Which tokens use which adapter is not state of the layer: each call gets its ``TokenRoute``
(``adapters/route.py``), and the input is already in the route's token space (real tokens only,
grouped by adapter, when the caller dropped padding).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import LoraSpec
from .lora_fused import routed_linear
from .route import TokenRoute


class RoutedLoRALinear(nn.Module):
    def __init__(self, base_layer: nn.Linear, specs: dict[str, LoraSpec], peft_name: str | None = None):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.peft_name = peft_name  # the name PEFT gives this linear (rank_pattern / alpha_pattern match it)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        for name, spec in specs.items():
            self.add_adapter(name, spec)
        self._merged: dict[str, tuple[tuple, torch.Tensor]] = {}

    def base_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Where the adapters live and their dtype: the base weight's (a quantised base layer,
        ``molora/quantized_linear.py``: its codes' device and the dtype it was quantised from)."""
        w = getattr(self.base_layer, "weight", None)
        return (w.device, w.dtype) if w is not None else (self.base_layer.compute.device, self.base_layer.dtype)

    def add_adapter(self, name: str, spec: LoraSpec) -> None:
        device, dtype = self.base_device_dtype()
        r, alpha = spec.rank_alpha(self.peft_name) if self.peft_name else (spec.r, spec.alpha)
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        self.lora_dropout[name] = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.scaling[name] = spec.scaling_for(r, alpha)
        if device.type != "meta":
            self.reset_adapter(name)

    @torch.no_grad()
    def reset_adapter(self, name: str) -> None:
        """peft's default init: A kaiming-uniform, B zero (the adapter starts as a no-op)."""
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)

    def _delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_A[name], self.lora_B[name]
        return b(a(self.lora_dropout[name](x.to(a.weight.dtype)))) * self.scaling[name]

    def forward(self, x: torch.Tensor, route: TokenRoute | None = None) -> torch.Tensor:
        """``x`` [..., in] in ``route``'s kept-token space (or any shape with ``route=None``: the base
        weight alone, e.g. a layer used outside a routed call)."""
        if route is None or not route.adapters:
            return self.base_layer(x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        groups = {n: sel for n, sel in route.groups.items() if n in self.lora_A}
        if route.merged and not torch.is_grad_enabled() and len(groups) == 1 and next(iter(groups.values())) is None:
            name = next(iter(groups))  # one adapter for every token: one matmul
            y = torch.nn.functional.linear(flat, self._merged_weight(name), self.base_layer.bias)
            return y.view(*lead, y.shape[-1])
        fused = self._fused_args(groups, flat) if route.fused else None
        if fused is not None:  # adapters on contiguous spans: one autograd node, no copies
            y = routed_linear(flat, self.base_layer.weight, self.base_layer.bias, fused)
        else:
            y = self.base_layer(flat)
            for name, sel in groups.items():
                if sel is None:  # every token uses this adapter
                    y = y + self._delta(name, flat).to(y.dtype)
                elif isinstance(sel, slice):  # contiguous: views, no copies
                    y[sel] += self._delta(name, flat[sel]).to(y.dtype)
                else:
                    y = y.index_add(0, sel, self._delta(name, flat.index_select(0, sel)).to(y.dtype))
        if route.touch_all:
            y = y + self._zero_touch(groups)
        return y.view(*lead, y.shape[-1])

    def _fused_args(self, groups: dict, flat: torch.Tensor):
        """(span, A, B, scaling, dropout p) per used adapter when every group is a span (or all
        tokens); None otherwise (the generic path). Under autocast, ``routed_linear`` casts like
        autocast would; outside it, mixed dtypes take the generic path."""
        mixed_ok = torch.is_autocast_enabled(flat.device.type)
        if not mixed_ok and self.base_layer.weight.dtype != flat.dtype:
            return None
        out = []
        for name, sel in groups.items():
            if sel is not None and not isinstance(sel, slice):
                return None
            if not mixed_ok and (self.lora_A[name].weight.dtype != flat.dtype
                                 or self.lora_B[name].weight.dtype != flat.dtype):
                return None
            drop = self.lora_dropout[name]
            p = drop.p if isinstance(drop, nn.Dropout) and drop.training else 0.0
            out.append((sel if sel is not None else slice(0, flat.shape[0]), self.lora_A[name].weight,
                        self.lora_B[name].weight, self.scaling[name], p))
        return out

    def _zero_touch(self, used) -> torch.Tensor:
        device, dtype = self.base_device_dtype()
        zero = torch.zeros((), device=device, dtype=dtype)
        for name in self.lora_A:
            if name not in used:
                for w in (self.lora_A[name].weight, self.lora_B[name].weight):
                    if w.requires_grad:
                        zero = zero + 0.0 * w.sum()
        return zero

    def delta_weight(self, name: str) -> torch.Tensor:
        """The dense weight update of one adapter: scaling * B @ A (shape of base weight)."""
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]

    @torch.no_grad()
    def merged_weight(self, name: str) -> torch.Tensor:
        return self.base_layer.weight + self.delta_weight(name).to(self.base_layer.weight.dtype)

    def _merged_weight(self, name: str) -> torch.Tensor:
        """W + s*B@A, cached until any of the three tensors changes (their version counters)."""
        ws = (self.base_layer.weight, self.lora_A[name].weight, self.lora_B[name].weight)
        key = tuple((w.data_ptr(), w._version) for w in ws)
        hit = self._merged.get(name)
        if hit is None or hit[0] != key:
            hit = (key, self.merged_weight(name))
            self._merged[name] = hit
        return hit[1]

    def clear_merged(self) -> None:
        self._merged.clear()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={list(self.lora_A)}"


def inject_routed_lora(module: nn.Module, specs: dict[str, LoraSpec], prefix: str = "model.") -> list[str]:
    """Replace every nn.Linear that some adapter adapts (``LoraSpec.adapts`` on its PEFT name:
    ``prefix`` + its path in ``module``); return the paths replaced."""
    replaced = []
    for path, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            child_path = f"{path}.{child_name}" if path else child_name
            these = {n: s for n, s in specs.items() if s.adapts(prefix + child_path)}
            if these:
                setattr(parent, child_name, RoutedLoRALinear(child, these, peft_name=prefix + child_path))
                replaced.append(child_path)
    return replaced
