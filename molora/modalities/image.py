"""The image modality: HD crops (``encoders/image_transform.py``) -> SigLIP tower -> 2x2 pool -> HD
layout with separators -> projector (``image_embed.py``), placeholder ``<|image_N|>``."""
from __future__ import annotations

import math
import os
import re

from ..errors import ImageError
from .base import EmbedContext, Modality, register_modality

# length estimates (manifests' length grouping): rough Phi-4-multimodal numbers, from the header's size
IMAGE_TOKENS_UNKNOWN = 1000  # a few HD crops when the image size is not known
_CROP, _GLOBAL_TOKENS, _CROP_TOKENS, _MAX_CROPS = 448, 273, 272, 36
# parameters that exist but are never trained: SigLIP's pooling head is not used by the model
NEVER = re.compile(r"image_embed\.img_processor\.(head\.|post_layernorm\.)")


def _tokens_from_size(w: int, h: int) -> int:
    crops = min(_MAX_CROPS, math.ceil(w / _CROP) * math.ceil(h / _CROP))
    return _GLOBAL_TOKENS + crops * _CROP_TOKENS


class ImageModality(Modality):
    name = content_type = input_type = "image"
    module_name = "image_embed"
    input_keys = ("image_pixel_values", "image_sizes", "image_attention_mask")
    count_key = "num_img_tokens"
    hint = "PIL image, numpy array, torch tensor or path"
    call_options = ("dynamic_hd",)
    media_error = ImageError
    noun = "images"
    chat_limit = 64
    unknown_tokens = IMAGE_TOKENS_UNKNOWN

    def token_id(self, config) -> int:
        return config.backbone.image_token_id

    def components(self) -> dict[str, str]:
        return {"vision_encoder": r"image_embed\.img_processor\.",
                "vision_projector": r"image_embed\.(img_projection\.|glb_GN|sub_GN)"}

    def unused_parameters(self, names, config) -> set[str]:
        """SigLIP's pooling head and post-LayerNorm, and the tower layers after ``feature_layer`` (the
        features are hidden_states[-2], so the last layer is unused)."""
        v = config.vision
        first_unused = v.num_hidden_layers + 1 + v.feature_layer if v.feature_layer < 0 else v.feature_layer
        out = set()
        for name in names:
            m = re.match(r"image_embed\.img_processor\.encoder\.layers\.(\d+)\.", name)
            if NEVER.match(name) or (m and int(m.group(1)) >= first_unused):
                out.add(name)
        return out

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

    def load(self, value, config, item: str):
        if isinstance(value, (str, os.PathLike)):
            from ..encoders.image_transform import load_image

            return load_image(value, max_pixels=config.vision.max_image_pixels)
        from ..data.hf_datasets import decode_image_value

        return decode_image_value(value, item)

    def estimate_tokens(self, value, probe: bool, duration: float | None = None) -> int:
        size = getattr(value, "size", None)  # PIL image
        if isinstance(size, tuple) and len(size) == 2:
            return _tokens_from_size(*size)
        if probe and isinstance(value, (str, os.PathLike)):
            try:
                import warnings

                from PIL import Image

                with warnings.catch_warnings():  # PIL's bomb warning: load_image refuses such images itself
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(value) as im:  # lazy: reads the header, decodes no pixels
                        return _tokens_from_size(*im.size)
            except Exception:  # noqa: BLE001 - missing/corrupt: the collator reports it
                return self.unknown_tokens
        return self.unknown_tokens

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
