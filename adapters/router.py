"""The router: per batch row, input type -> LoRA adapter and audio projector (the config's table)."""
from __future__ import annotations

import torch

from ..config import MoLoRAConfig
from ..errors import ConfigError


def input_type(has_image: bool, has_audio: bool) -> str:
    if has_image and has_audio:
        return "image+speech"
    if has_image:
        return "image"
    if has_audio:
        return "speech"
    return "text"


class Router:
    def __init__(self, config: MoLoRAConfig):
        self.table = config.router
        self.adapter_names = list(config.adapters)

    def row_types(self, rows, image_token_id: int, audio_token_id: int) -> list[str]:
        """Input type of each row: ``rows`` is a [B, T] tensor or a list of 1-D token tensors."""
        if torch.is_tensor(rows):
            has_img = (rows == image_token_id).any(dim=-1).tolist()
            has_aud = (rows == audio_token_id).any(dim=-1).tolist()
        else:
            has_img = [bool((r == image_token_id).any()) for r in rows]
            has_aud = [bool((r == audio_token_id).any()) for r in rows]
        return [input_type(i, a) for i, a in zip(has_img, has_aud)]

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
