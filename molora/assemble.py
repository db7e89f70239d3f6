"""Assemble a new MoLoRA model from parts: a Phi-4-mini (Phi-3 architecture) checkpoint for the
backbone, an open_clip SigLIP checkpoint for the vision tower, fresh conformer / projectors / LoRAs.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import resolve_path
from .stored_tensors import read, stored_tensors
from .config import MoLoRAConfig
from .errors import CheckpointError, ConfigError
from .checkpoint_layouts import adapted


def backbone_config_from_phi3(directory: Path, config: MoLoRAConfig) -> MoLoRAConfig:
    """Take the decoder's shapes from a Phi-3 / Phi-4-mini config.json (real values, not defaults)."""
    from .checkpoint import _read_json
    from .checkpoint_layouts import _backbone_from_flat, check_flat_config

    d = _read_json(directory / "config.json")
    if d.get("model_type") not in ("phi3", "phi4mm", "phi4_multimodal"):
        raise CheckpointError(f"expected a Phi-3 / Phi-4-mini checkpoint, got model_type {d.get('model_type')!r}",
                              str(directory))
    try:
        b = _backbone_from_flat(check_flat_config(d), config.backbone)
    except ConfigError as e:
        raise CheckpointError(str(e), str(directory / "config.json")) from None
    b.image_token_id, b.audio_token_id = config.backbone.image_token_id, config.backbone.audio_token_id
    return config.replace(backbone=b.__dict__)


def assemble(config: MoLoRAConfig, backbone: str | None = None, vision: str | None = None, seed: int = 0):
    """Build ``config``'s model; load the decoder from ``backbone`` (dir or hub id of a Phi-4-mini
    checkpoint) and the vision tower from ``vision`` (an open_clip SigLIP ``.safetensors`` file),
    resizing the tower's position grid when it was trained at another resolution."""
    from .encoders.open_clip_import import load_open_clip_siglip
    from .model import MoLoRAModel

    backbone = backbone or config.backbone.pretrained
    vision = vision or config.vision.pretrained
    directory = resolve_path(backbone) if backbone else None
    if directory is not None:
        config = backbone_config_from_phi3(directory, config)
    torch.manual_seed(seed)
    model = MoLoRAModel(config)
    if directory is not None:
        raw = read(stored_tensors(directory))
        lm = {}
        for k, v in raw.items():
            if k == "lm_head.weight":
                if config.backbone.tie_word_embeddings:
                    continue
                lm["lm_head.weight"] = v
                continue
            if not k.startswith("model."):
                continue
            rest = k[len("model."):]
            parts = rest.rsplit(".", 2)
            if len(parts) == 3 and adapted(config, f"model.{parts[0]}.{parts[1]}"):
                rest = f"{parts[0]}.{parts[1]}.base_layer.{parts[2]}"
            lm["language_model." + rest] = v
        own = model.state_dict()
        missing = [k for k in own if k.startswith("language_model.") and ".lora_" not in k and k not in lm]
        extra = [k for k in lm if k not in own]
        if missing or extra:
            raise CheckpointError(f"backbone weights do not fit: missing {missing[:4]}, unexpected {extra[:4]}",
                                  str(directory))
        model.load_state_dict(lm, strict=False)
    if vision is not None:
        tower = load_open_clip_siglip(vision, config.vision)
        missing, unexpected = model.image_embed.img_processor.load_state_dict(tower, strict=False)
        missing = [m for m in missing if not m.startswith("head.")]
        if missing or unexpected:
            raise CheckpointError(f"vision tower weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}",
                                  str(vision))
    model.freeze_base()
    return model
