"""Multi-adapter LoRA linear layer with per-sample routing (peft's layout: dicts keyed by adapter).

State-dict keys follow peft / the official Phi-4-multimodal checkpoint:
``<module>.base_layer.weight``, ``<module>.lora_A.<adapter>.weight``, ``<module>.lora_B.<adapter>.weight``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import LoraSpec
from .lora_fused import routed_linear
from .routing import RoutingState, gather_rows


class RoutedLoRALinear(nn.Module):
    def __init__(self, base_layer: nn.Linear, specs: dict[str, LoraSpec], routing: RoutingState,
                 peft_name: str | None = None):
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
        # a plain attribute (not a submodule): shared by all layers of the model
        object.__setattr__(self, "routing", routing)
        self.merge_inference = False  # see MoLoRAModel.set_merged_inference
        self._merged: dict[str, tuple[tuple, torch.Tensor]] = {}

    def add_adapter(self, name: str, spec: LoraSpec) -> None:
        w = self.base_layer.weight
        r, alpha = spec.rank_alpha(self.peft_name) if self.peft_name else (spec.r, spec.alpha)
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.lora_dropout[name] = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.scaling[name] = spec.scaling_for(r, alpha)
        if w.device.type != "meta":
            self.reset_adapter(name)

    @torch.no_grad()
    def reset_adapter(self, name: str) -> None:
        """peft's default init: A kaiming-uniform, B zero (the adapter starts as a no-op)."""
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)

    def _delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_A[name], self.lora_B[name]
        return b(a(self.lora_dropout[name](x.to(a.weight.dtype)))) * self.scaling[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self.routing
        lead = x.shape[:-1]
        n = lead.numel()
        if not st.active or (not st.groups and st.tokens is None and not st.touch_all):  # no adapter, no padding
            return self.base_layer(x)
        padded = n == st.n_tokens  # [B, T, d] hidden states, maybe with padding tokens
        if not padded and n != st.n_kept:  # not a routed call: base weights only
            return self.base_layer(x)
        flat = x.reshape(-1, x.shape[-1])
        if padded and st.tokens is not None:  # drop padding tokens
            flat = gather_rows(flat, st.tokens)
        if self.merge_inference and not torch.is_grad_enabled() and len(st.groups) == 1:
            (name, sel), = st.groups.items()
            if sel is None and name in self.lora_A:  # one adapter for every token: one matmul
                y = torch.nn.functional.linear(flat, self._merged_weight(name), self.base_layer.bias)
                if padded and st.tokens is not None:
                    return st.scatter(y)
                return y.view(*lead, y.shape[-1])
        fused = self._fused_args(st.groups, flat)
        if fused:  # adapters on contiguous spans: one autograd node, no copies
            y = routed_linear(flat, self.base_layer.weight, self.base_layer.bias, fused)
            if st.touch_all:
                y = y + self._zero_touch(st.groups)
            return st.scatter(y) if padded and st.tokens is not None else y.view(*lead, y.shape[-1])
        y = self.base_layer(flat)
        for name, sel in st.groups.items():
            if name not in self.lora_A:
                continue
            if sel is None:  # every kept token uses this adapter
                y = y + self._delta(name, flat).to(y.dtype)
            elif isinstance(sel, slice):  # this adapter's tokens are contiguous: views, no copies
                y[sel] += self._delta(name, flat[sel]).to(y.dtype)
            else:
                y = y.index_add(0, sel, self._delta(name, flat.index_select(0, sel)).to(y.dtype))
        if st.touch_all:
            y = y + self._zero_touch(st.groups)
        if padded and st.tokens is not None:
            return st.scatter(y)
        return y.view(*lead, y.shape[-1])

    def _fused_args(self, groups, flat: torch.Tensor):
        """(span, A, B, scaling, dropout p) per used adapter when every group is a span (or all
        tokens) and dtypes agree; None otherwise (the generic path)."""
        if flat.dtype != self.base_layer.weight.dtype or torch.is_autocast_enabled(flat.device.type):
            return None
        out = []
        for name, sel in groups.items():
            if name not in self.lora_A:
                continue
            if sel is not None and not isinstance(sel, slice):
                return None
            a, b = self.lora_A[name].weight, self.lora_B[name].weight
            if a.dtype != flat.dtype or b.dtype != flat.dtype:
                return None
            drop = self.lora_dropout[name]
            p = drop.p if isinstance(drop, nn.Dropout) and drop.training else 0.0
            out.append((sel if sel is not None else slice(0, flat.shape[0]), a, b, self.scaling[name], p))
        return out

    def _zero_touch(self, used) -> torch.Tensor:
        zero = self.base_layer.weight.new_zeros(())
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

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={list(self.lora_A)}"


def inject_routed_lora(module: nn.Module, specs: dict[str, LoraSpec], routing: RoutingState,
                       prefix: str = "model.") -> list[str]:
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
                setattr(parent, child_name, RoutedLoRALinear(child, these, routing, peft_name=prefix + child_path))
                replaced.append(child_path)
    return replaced


def compact_token_blocks(module: torch.nn.Module, routing: RoutingState, names=("mlp",)) -> int:
    """Run token-wise blocks (the decoder MLPs) on real tokens only: a pre-hook gathers them, a
    hook scatters the result back (zeros at padding). Their routed linears then see the compact
    tokens directly. Returns the number of blocks hooked."""

    def pre(_mod, args):
        h = routing.gather(args[0])
        return None if h is None else (h, *args[1:])

    def post(_mod, args, out):
        if routing.active and routing.tokens is not None and out.dim() == 2 and out.shape[0] == routing.n_kept:
            return routing.scatter(out)
        return out

    n = 0
    for path, mod in module.named_modules():
        if path.rsplit(".", 1)[-1] in names:
            mod.register_forward_pre_hook(pre)
            mod.register_forward_hook(post)
            n += 1
    return n
