"""The router: per batch row, input type -> LoRA adapter and audio projector (the config's table)."""
from __future__ import annotations

import torch

from ..config import MoLoRAConfig
from ..errors import ConfigError


def input_type(present: list[str]) -> str:
    """A row's input type: the names of the modalities it holds, joined by "+" ("text" for none)."""
    return "+".join(present) or "text"


class Router:
    def __init__(self, config: MoLoRAConfig):
        self.table = config.router
        self.adapter_names = list(config.adapters)
        # (input type name, placeholder id) per modality, in the config's order
        self.markers = [(m.input_type, m.token_id(config)) for m in config.modality_entries()]

    def row_types(self, rows) -> list[str]:
        """Input type of each row: ``rows`` is a [B, T] tensor or a list of 1-D token tensors."""
        n = rows.shape[0] if torch.is_tensor(rows) else len(rows)
        present: list[list[str]] = [[] for _ in range(n)]
        for name, tid in self.markers:
            if torch.is_tensor(rows):
                flags = (rows == tid).any(dim=-1).tolist()
            else:
                flags = [bool((r == tid).any()) for r in rows]
            for i, f in enumerate(flags):
                if f:
                    present[i].append(name)
        return [input_type(p) for p in present]

    def _route(self, t: str):
        if t not in self.table:
            raise ConfigError(f"no route for input type {t!r}", "router")
        return self.table[t]

    def adapter_index(self, types: list[str], device=None) -> torch.Tensor:
        idx = []
        for t in types:
            a = self._route(t).adapter
            idx.append(-1 if a is None else self.adapter_names.index(a))
        return torch.tensor(idx, dtype=torch.long, device=device)

    def adapter(self, t: str) -> str | None:
        return self._route(t).adapter

    def audio_projector(self, t: str) -> str:
        p = self._route(t).audio_projector
        if p is None:
            raise ConfigError(f"input type {t!r} has audio but routes to no audio projector", "router")
        return p
