"""Start the vision tower from an open_clip SigLIP checkpoint (a timm ViT under ``visual.trunk.``).

timm -> SiglipVisionTower names:

    patch_embed.proj              -> embeddings.patch_embedding
    pos_embed [1, n*n, D]         -> embeddings.position_embedding.weight [N*N, D] (resized if n != N)
    blocks.i.norm1 / norm2        -> encoder.layers.i.layer_norm1 / layer_norm2
    blocks.i.attn.qkv [3D, D]     -> encoder.layers.i.self_attn.{q,k,v}_proj (split in that order)
    blocks.i.attn.proj            -> encoder.layers.i.self_attn.out_proj
    blocks.i.mlp.fc1 / fc2        -> encoder.layers.i.mlp.fc1 / fc2
    norm                          -> post_layernorm
    attn_pool.latent              -> head.probe
    attn_pool.q + attn_pool.kv    -> head.attention.in_proj_{weight,bias} ([q; k; v])
    attn_pool.proj / norm / mlp   -> head.attention.out_proj / head.layernorm / head.mlp

The position grid is resampled with timm's own ``resample_abs_pos_embed`` (bicubic) when the
checkpoint was trained at another resolution, e.g. 27x27 (384 px) -> 32x32 (448 px).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

import torch

from molora.config import VisionConfig
from molora.errors import CheckpointError

__all__ = ["load_open_clip_siglip", "convert_timm_siglip"]

_PREFIXES = ("visual.trunk.", "module.visual.trunk.", "trunk.")

_BLOCK_RENAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_TOP_RENAMES = {
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
    "attn_pool.latent": "head.probe",
    "attn_pool.proj.weight": "head.attention.out_proj.weight",
    "attn_pool.proj.bias": "head.attention.out_proj.bias",
    "attn_pool.norm.weight": "head.layernorm.weight",
    "attn_pool.norm.bias": "head.layernorm.bias",
    "attn_pool.mlp.fc1.weight": "head.mlp.fc1.weight",
    "attn_pool.mlp.fc1.bias": "head.mlp.fc1.bias",
    "attn_pool.mlp.fc2.weight": "head.mlp.fc2.weight",
    "attn_pool.mlp.fc2.bias": "head.mlp.fc2.bias",
}


OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "model.safetensors")  # open_clip's name, then timm's


def _read(source: str | Path | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(source, Mapping):
        return dict(source), "state dict"
    path = Path(source)
    name = str(path)
    if path.is_dir():  # a downloaded open_clip repository: its weights file by its canonical name only
        found = [path / f for f in OPEN_CLIP_WEIGHTS if (path / f).is_file()]
        if not found:
            raise CheckpointError(f"no {' or '.join(OPEN_CLIP_WEIGHTS)} in the folder (another file: pass its path)",
                                  name)
        path = found[0]
    if not path.exists():
        raise CheckpointError("file not found", name)
    if path.suffix != ".safetensors":
        raise CheckpointError("only safetensors checkpoints are read (convert .bin/.pt first)", name)
    from safetensors.torch import load_file

    try:
        return load_file(str(path)), name
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read safetensors file ({e})", name) from None


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd  # a bare timm state dict


def convert_timm_siglip(sd: Mapping[str, torch.Tensor], config: VisionConfig, name: str = "state dict") -> dict[str, torch.Tensor]:
    """A timm SigLIP ViT state dict (no prefix) -> ``SiglipVisionTower`` state dict."""
    d = config.hidden_size
    out: dict[str, torch.Tensor] = {}
    if "pos_embed" not in sd or "patch_embed.proj.weight" not in sd:
        raise CheckpointError("not a timm/open_clip ViT (no pos_embed / patch_embed.proj.weight)", name)
    patch_w = sd["patch_embed.proj.weight"]
    if tuple(patch_w.shape) != (d, config.num_channels, config.patch_size, config.patch_size):
        raise CheckpointError(
            f"patch embedding {tuple(patch_w.shape)} does not match hidden_size {d} / patch_size {config.patch_size}", name)
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth != config.num_hidden_layers:
        raise CheckpointError(f"checkpoint has {depth} blocks, config.num_hidden_layers is {config.num_hidden_layers}", name)
    unknown = []
    for key, value in sd.items():
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
            continue
        m = re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m:
            i, mod, kind = m.groups()
            base = f"encoder.layers.{i}."
            if mod == "attn.qkv":
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), value.split(d, dim=0)):
                    out[f"{base}self_attn.{proj}.{kind}"] = part.clone()
            elif mod in _BLOCK_RENAMES:
                out[f"{base}{_BLOCK_RENAMES[mod]}.{kind}"] = value
            else:
                unknown.append(key)
            continue
        if key in ("attn_pool.q.weight", "attn_pool.q.bias", "attn_pool.kv.weight", "attn_pool.kv.bias", "pos_embed"):
            continue
        unknown.append(key)
    if unknown:
        raise CheckpointError(f"unexpected timm keys (not a SigLIP-style ViT?): {unknown[:5]}", name)
    for kind in ("weight", "bias"):
        q, kv = sd.get(f"attn_pool.q.{kind}"), sd.get(f"attn_pool.kv.{kind}")
        if q is not None and kv is not None:
            out[f"head.attention.in_proj_{kind}"] = torch.cat([q, kv], dim=0)
    out["embeddings.position_embedding.weight"] = resize_position_grid(sd["pos_embed"], config.num_patches_per_side, name)
    return out


def resize_position_grid(pos_embed: torch.Tensor, grid: int, name: str = "pos_embed") -> torch.Tensor:
    """[1, n*n, D] (or [n*n, D]) -> [grid*grid, D], bicubic-resampled when n != grid."""
    pe = pos_embed.reshape(1, -1, pos_embed.shape[-1])
    n = math.isqrt(pe.shape[1])
    if n * n != pe.shape[1]:
        raise CheckpointError(f"pos_embed has {pe.shape[1]} positions: not a square grid (class token?)", name)
    if n != grid:
        from timm.layers import resample_abs_pos_embed

        pe = resample_abs_pos_embed(pe, [grid, grid], old_size=[n, n], num_prefix_tokens=0)
    return pe[0].contiguous()


def load_open_clip_siglip(source: str | Path | Mapping[str, torch.Tensor], config: VisionConfig) -> dict[str, torch.Tensor]:
    """An open_clip SigLIP checkpoint (``.safetensors`` file, a folder holding ``open_clip_model.safetensors`` or ``model.safetensors``, or a state dict;
    ``visual.trunk.*`` keys or a bare timm state dict) -> ``SiglipVisionTower`` state dict.

    The result loads with ``tower.load_state_dict(sd)``; when the checkpoint has no attention
    pooling (``attn_pool.*``) the ``head.*`` keys are absent and ``strict=False`` is needed.
    """
    sd, name = _read(source)
    return convert_timm_siglip(_strip_prefix(sd), config, name)
