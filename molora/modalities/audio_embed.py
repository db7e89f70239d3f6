"""Audio side of the model: the conformer encoder and the named audio projectors.

Keys follow the official checkpoint under ``model.embed_tokens_extend.audio_embed.``:
``encoder.*`` and ``audio_projection.<name>.{0,2}.*`` (``speech`` and ``vision`` in the
reference; a new projector is a config entry).
"""
from __future__ import annotations

import torch
from torch import nn

from ..adapters.projectors import mlp_projector
from ..config import MoLoRAConfig
from ..encoders.conformer import ConformerEncoder


class AudioEmbedder(nn.Module):
    def __init__(self, config: MoLoRAConfig):
        super().__init__()
        a = config.audio
        self.encoder = ConformerEncoder(a)
        d_in = a.hidden_size * a.downsample_rate
        self.audio_projection = nn.ModuleDict(
            {name: mlp_projector(d_in, config.backbone.hidden_size) for name in config.audio_projectors}
        )

    def forward(self, features: torch.Tensor, sizes: torch.Tensor, mask: torch.Tensor | None,
                projectors: list[str]) -> list[torch.Tensor]:
        """Encode all clips in one batch; project clip i with projector ``projectors[i]``.

        Returns one [sizes[i], hidden] tensor per clip, in input order.
        """
        hidden, _ = self.encoder(features, mask)
        out: list[torch.Tensor | None] = [None] * hidden.shape[0]
        for name in dict.fromkeys(projectors):  # each projector once, over the clips routed to it
            idx = [i for i, p in enumerate(projectors) if p == name]
            proj = self.audio_projection[name](hidden[idx])
            for j, i in enumerate(idx):
                out[i] = proj[j, : int(sizes[i])]
        return out  # type: ignore[return-value]
