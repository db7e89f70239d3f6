"""Rescaling the vision tower's residual stream so its pooled features have a given mean norm (an exact
reparametrisation of a pre-LayerNorm tower), before the dense-reading phase."""
from __future__ import annotations

import random

import torch

from molora.encoders.image_transform import ImageTransform
from molora.synthetic.charts import draw_chart
from molora.synthetic.documents import draw_document

from .loop import log


@torch.no_grad()
def rescale_tower(model, target: float, seed: int) -> float:
    """Scale the vision tower's residual stream (patch and position embeddings, every layer's
    attention-out and fc2 writes) so that the pooled features' mean norm is ``target``. The layers
    are pre-LayerNorm, so this is an exact reparametrisation (features x factor, nothing else
    changes); it brings the projected image tokens near the text embeddings' scale (the shipped
    tower's features have norm ~150: a fresh projector turns them into tokens of norm ~50 against
    ~2 for text embeddings). Returns the factor."""
    rng = random.Random(f"pretrain-norm-{seed}")
    pages = [draw_document(rng).image for _ in range(3)] + [draw_chart(rng).image for _ in range(3)]
    emb = model.image_embed
    b = ImageTransform(model.config.vision)(pages)
    px, mask = b["image_pixel_values"].flatten(0, 1), b["image_attention_mask"].flatten(0, 1).bool()
    before = float(emb.crop_features(px, mask).norm(dim=-1).mean())
    c = target / before
    for n, p in emb.img_processor.named_parameters():
        if n.startswith("embeddings.") or (n.startswith("encoder.") and (".self_attn.out_proj." in n or ".mlp.fc2." in n)):
            p.mul_(c)
    after = float(emb.crop_features(px, mask).norm(dim=-1).mean())
    log(f"tower features rescaled x{c:.4f}: mean norm {before:.1f} -> {after:.2f}")
    return c
