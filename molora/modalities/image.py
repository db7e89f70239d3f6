"""The image modality: HD crops (``encoders/image_transform.py``) -> SigLIP tower -> 2x2 pool -> HD
layout with separators -> projector (``image_embed.py``), placeholder ``<|image_N|>``."""
from __future__ import annotations

from .base import EmbedContext, Modality, register_modality


class ImageModality(Modality):
    name = content_type = input_type = "image"
    module_name = "image_embed"
    input_keys = ("image_pixel_values", "image_sizes", "image_attention_mask")
    count_key = "num_img_tokens"
    hint = "PIL image, numpy array, torch tensor or path"
    call_options = ("dynamic_hd",)

    def token_id(self, config) -> int:
        return config.backbone.image_token_id

    def components(self) -> dict[str, str]:
        return {"vision_encoder": r"image_embed\.img_processor\.",
                "vision_projector": r"image_embed\.(img_projection\.|glb_GN|sub_GN)"}

    def build(self, config):
        from .image_embed import ImageEmbedder

        return ImageEmbedder(config)

    def embed(self, module, inputs, ctx: EmbedContext, device, dtype):
        import torch

        pixels, sizes, mask = (inputs.get(k) for k in self.input_keys)
        if mask is None:  # every patch of every crop is real
            p = module.crop_size // module.patches_per_side
            mask = torch.ones(pixels.shape[:2] + pixels.shape[-2:], dtype=torch.bool, device=pixels.device)[..., ::p, ::p]
        return module(pixels.to(device), sizes, mask)

    def processor(self, config):
        from ..encoders.image_transform import ImageTransform

        return ImageTransform(config.vision)

    def token_count(self, part, item) -> int:
        w, h = item.size
        return part.num_tokens(w, h)

    def as_items(self, value) -> list:
        from ..encoders.image_transform import as_image_list

        return as_image_list(value)


IMAGE = register_modality(ImageModality())
