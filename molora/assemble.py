"""Assemble a new MoLoRA model from parts: a transformers checkpoint of a backbone family
(``molora/backbones``: Phi-4-mini / Phi-3, Llama, Qwen2) for the decoder, an open_clip SigLIP
checkpoint for the vision tower, fresh conformer / projectors / LoRAs.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .checkpoint import resolve_path
from .stored_tensors import read, stored_tensors
from .config import MoLoRAConfig
from .errors import CheckpointError, ConfigError
from .checkpoint_layouts import adapted


def backbone_config_from_checkpoint(directory: Path, config: MoLoRAConfig) -> MoLoRAConfig:
    """Take the decoder's family and shapes from a backbone checkpoint's config.json (real values, not
    defaults); an adapter on every projection of ``config``'s family goes on every projection of this one."""
    from .backbones import FAMILIES, family_of_model_type
    from .checkpoint import _read_json

    d = _read_json(directory / "config.json")
    fam = family_of_model_type(d.get("model_type"))
    if fam is None:
        known = sorted(t for f in FAMILIES.values() for t in f.model_types)
        raise CheckpointError(f"expected a backbone checkpoint (model_type one of {known}), got model_type "
                              f"{d.get('model_type')!r}", str(directory))
    try:
        b = fam.read_config(d, config.backbone)
    except ConfigError as e:
        raise CheckpointError(str(e), str(directory / "config.json")) from None
    b.image_token_id, b.audio_token_id = config.backbone.image_token_id, config.backbone.audio_token_id
    every = FAMILIES[config.backbone.family].adapted_by_default
    adapters = {name: dataclasses.replace(spec, target_modules=None)  # every projection, of the new family
                if spec.modules is None and spec.target_modules == every else spec
                for name, spec in config.adapters.items()}
    return config.replace(backbone=b.__dict__, adapters=adapters)


def assemble(config: MoLoRAConfig, backbone: str | None = None, vision: str | None = None, seed: int = 0):
    """Build ``config``'s model; load the decoder from ``backbone`` (dir or hub id of a checkpoint of a
    backbone family: Phi-4-mini, Llama, Qwen2) and the vision tower from ``vision`` (an open_clip
    SigLIP ``.safetensors`` file), resizing the tower's position grid when it was trained at another resolution."""
    from .encoders.open_clip_import import load_open_clip_siglip
    from .model import MoLoRAModel

    backbone = backbone or config.backbone.pretrained
    vision = vision or config.vision.pretrained
    directory = resolve_path(backbone) if backbone else None
    if directory is not None:
        config = backbone_config_from_checkpoint(directory, config)
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
