"""Image tokens for the language model: SigLIP tower -> 2x2 pooling -> HD layout -> projector.

Per image (crops from ``ImageTransform``: slot 0 global view, then a ``rows x cols`` grid):

    [sub-crop grid, trimmed to the area that holds image content, ``sub_GN`` after each row]
    + ``glb_GN``
    + [global view grid, ``sub_GN`` after each row]

then the projector (Linear -> GELU -> Linear) maps every token to the backbone's width.
Parameter names are the official checkpoint's (``img_processor``, ``glb_GN``, ``sub_GN``,
``img_projection.{0,2}``); ``to_transformers_keys`` / ``from_transformers_keys`` convert to and
from transformers' native names.

Unlike the reference, the tower only runs on crops that exist: the all-padding slots that
batch padding adds (up to ``dynamic_hd`` per image) are skipped, which changes no output.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from molora.adapters.projectors import mlp_projector
from molora.config import MoLoRAConfig
from molora.errors import ImageError

from ..encoders.siglip import SiglipVisionTower
from ..keymap import rename_keys

__all__ = ["ImageEmbedder", "TRANSFORMERS_KEY_RENAMES", "to_transformers_keys", "from_transformers_keys"]

# (our name, transformers' name), relative to ``model.embed_tokens_extend.image_embed.``;
# ``img_processor.*`` is the same on both sides.
_RENAMED = [
    ("img_projection.0", "img_projection_up"),
    ("img_projection.2", "img_projection_down"),
    ("glb_GN", "global_img_feature_extensor"),
    ("sub_GN", "sub_img_feature_extensor"),
]
TRANSFORMERS_KEY_RENAMES: list[tuple[str, str]] = [(rf"^{re.escape(a)}(?=\.|$)", b) for a, b in _RENAMED]
_FROM_TRANSFORMERS: list[tuple[str, str]] = [(rf"^{re.escape(b)}(?=\.|$)", a) for a, b in _RENAMED]


def to_transformers_keys(sd: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Our (official phi4mm) image-embedding keys -> transformers' ``Phi4MultimodalImageEmbedding`` keys.

    Keys are taken relative to ``prefix`` (e.g. ``"model.embed_tokens_extend.image_embed."``);
    keys outside it pass through unchanged.
    """
    return rename_keys(sd, TRANSFORMERS_KEY_RENAMES, prefix)


def from_transformers_keys(sd: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The inverse of ``to_transformers_keys``."""
    return rename_keys(sd, _FROM_TRANSFORMERS, prefix)


class ImageEmbedder(nn.Module):
    """``forward(image_pixel_values [N,C,3,S,S], image_sizes [N,2], image_attention_mask [N,C,S/p,S/p])``
    -> list of N tensors ``[tokens_i, backbone hidden]`` in input order."""

    def __init__(self, config: MoLoRAConfig):
        super().__init__()
        v = config.vision
        self.crop_size = v.crop
        self.patches_per_side = v.crop // v.patch_size
        # 2x2 pooling; an odd grid is reflect-padded when the tower's own grid is odd (as transformers does)
        self.pad_odd = v.num_patches_per_side % 2 == 1
        self.pooled_per_side = (self.patches_per_side + self.pad_odd) // 2
        dim = v.hidden_size
        self.img_processor = SiglipVisionTower(v)
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.img_projection = mlp_projector(dim, config.backbone.hidden_size)

    # -- features ------------------------------------------------------------------------
    def crop_features(self, crops: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """Tower + 2x2 average pooling: [T,3,S,S], [T,m,m] -> [T, g, g, D] (g = ceil(m/2))."""
        m = self.patches_per_side
        x = self.img_processor(crops, patch_mask)  # T, m*m, D
        x = x.unflatten(1, (m, m)).permute(0, 3, 1, 2)  # T, D, m, m
        if self.pad_odd:
            x = F.pad(x, (0, 1, 0, 1), mode="reflect")
        return F.avg_pool2d(x, 2).permute(0, 2, 3, 1)

    def _grids(self, image_sizes: torch.Tensor, n_images: int, slots: int) -> list[tuple[int, int]]:
        grids = []
        for i, (h, w) in enumerate(image_sizes.view(-1, 2).tolist()):
            rows, cols = int(h) // self.crop_size, int(w) // self.crop_size
            if rows < 1 or cols < 1 or 1 + rows * cols > slots:
                raise ImageError(f"image_sizes {h}x{w} do not fit {slots} crop slots of {self.crop_size}",
                                 f"image[{i}]")
            grids.append((rows, cols))
        if len(grids) != n_images:
            raise ImageError(f"{len(grids)} image_sizes for {n_images} images", "image_sizes")
        return grids

    def forward(self, image_pixel_values: torch.Tensor, image_sizes: torch.Tensor,
                image_attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        n, slots = image_pixel_values.shape[:2]
        m, g, dim = self.patches_per_side, self.pooled_per_side, self.glb_GN.shape[-1]
        dev = self.glb_GN.device
        grids = self._grids(image_sizes, n, slots)
        counts = [1 + r * c for r, c in grids]
        if image_attention_mask is None:
            image_attention_mask = torch.ones(n, slots, m, m, dtype=torch.bool)

        # run the tower once, over the crops that exist (global view + grid of each image)
        index = torch.cat([torch.arange(k) + i * slots for i, k in enumerate(counts)]).to(image_pixel_values.device)
        crops = image_pixel_values.flatten(0, 1).index_select(0, index).to(dev)
        masks = image_attention_mask.flatten(0, 1).to(index.device).index_select(0, index).to(dev, torch.bool)
        feats = self.crop_features(crops, masks)  # T, g, g, D

        # useful area of each sub-crop grid, read from the mask at the pooled positions (on the CPU: one sync)
        useful = []
        for (rows, cols), own_mask in zip(grids, masks.cpu().split(counts)):
            pooled = own_mask[1:, ::2, ::2].reshape(rows, cols, g, g).transpose(1, 2).reshape(rows * g, cols * g)
            useful.append((int(pooled[:, 0].sum()), int(pooled[0, :].sum())))

        pieces = []
        for (rows, cols), (useful_h, useful_w), own in zip(grids, useful, feats.split(counts)):
            grid = own[1:].reshape(rows, cols, g, g, dim).transpose(1, 2).reshape(rows * g, cols * g, dim)
            sub = self._with_row_ends(grid[:useful_h, :useful_w])
            glb = self._with_row_ends(own[0])
            pieces.append(torch.cat([sub, self.glb_GN[0].to(glb.dtype), glb]))

        tokens = self.img_projection(torch.cat(pieces))  # one projector call for all images
        return list(tokens.split([p.shape[0] for p in pieces]))

    def _with_row_ends(self, grid: torch.Tensor) -> torch.Tensor:
        """[h, w, D] -> [h*(w+1), D] with ``sub_GN`` after each row."""
        h = grid.shape[0]
        return torch.cat([grid, self.sub_GN[0].expand(h, 1, -1).to(grid.dtype)], dim=1).flatten(0, 1)
