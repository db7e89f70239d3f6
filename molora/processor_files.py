"""The processor files a checkpoint repository ships, read into molora's processor settings.

- ``preprocessor_config.json``: the official repository's (``Phi4MMImageProcessor`` /
  ``Phi4MMAudioFeatureExtractor``: ``dynamic_hd``, ``audio_compression_rate``,
  ``audio_downsample_rate``, ``audio_feat_stride``) or transformers' (``Phi4MultimodalImageProcessor``:
  ``dynamic_hd``, ``size``, ``patch_size``, ``image_mean`` / ``image_std``;
  ``Phi4MultimodalFeatureExtractor``: ``feature_size``, ``sampling_rate``, ``n_fft``, ...);
  ``processor_config.json`` with ``image_processor`` / ``audio_processor`` sections (transformers 5).
  ``dynamic_hd`` (crops per image) is taken; every other value must agree with what the model and
  molora's front ends compute, or loading stops with the file and the field.
- written for transformers (`write_transformers_files`): ``processor_config.json`` as transformers'
  ``Phi4MultimodalProcessor`` saves it, and the media tokens in ``tokenizer_config.json``
  (``image_token`` / ``audio_token``), so ``AutoProcessor.from_pretrained`` loads a saved folder.
- the chat template: ``chat_template.json`` / ``processor_config.json``'s ``chat_template`` (processor
  level), else the tokenizer's (``chat_template.jinja`` / ``tokenizer_config.json``).
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import MoLoRAConfig
from .errors import CheckpointError

PREPROCESSOR = "preprocessor_config.json"
PROCESSOR = "processor_config.json"
CHAT_TEMPLATE_JSON = "chat_template.json"
# every file a processor or tokenizer folder may hold (molora's, transformers' fast and slow tokenizers)
PROCESSOR_FILES = frozenset({PREPROCESSOR, PROCESSOR, CHAT_TEMPLATE_JSON, "chat_template.jinja", "molora_processor.json",
                             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                             "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json"})

# fields molora's front ends fix: (section, field) -> the value they compute with, or a function of the config
_AUDIO_FIXED = {"feature_size": lambda c: c.audio.num_mel_bins, "sampling_rate": lambda c: c.audio.sampling_rate,
                "audio_compression_rate": lambda c: c.audio.time_reduction,
                "audio_downsample_rate": lambda c: c.audio.downsample_rate, "audio_feat_stride": lambda c: 1,
                "n_fft": lambda c: 512, "hop_length": lambda c: 160, "win_length": lambda c: 400,
                "preemphasis": lambda c: 0.97, "mel_min_frequency": lambda c: 0, "mel_max_frequency": lambda c: 7690}
_IMAGE_FIXED = {"patch_size": lambda c: c.vision.patch_size, "image_mean": lambda c: [0.5, 0.5, 0.5],
                "image_std": lambda c: [0.5, 0.5, 0.5], "crop_size": lambda c: c.vision.crop}


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"invalid JSON ({e})", str(path)) from None


def processor_sections(directory: Path) -> list[tuple[str, dict]]:
    """(file, settings) of every image / audio processor description in ``directory``."""
    out = []
    if (directory / PREPROCESSOR).exists():
        out.append((PREPROCESSOR, _json(directory / PREPROCESSOR)))
    if (directory / PROCESSOR).exists():
        d = _json(directory / PROCESSOR)
        out += [(f"{PROCESSOR} [{k}]", d[k]) for k in ("image_processor", "audio_processor", "feature_extractor")
                if isinstance(d.get(k), dict)]
    return out


def apply_processor_files(config: MoLoRAConfig, directory: Path) -> tuple[MoLoRAConfig, list[str]]:
    """``config`` with the repository's processor settings applied; and the files read."""
    read = []
    for name, d in processor_sections(directory):
        where = str(directory / name)
        if "dynamic_hd" in d:
            n = d["dynamic_hd"]
            if not isinstance(n, int) or n < 1:
                raise CheckpointError(f"dynamic_hd must be a positive integer, got {n!r}", where)
            config = config.replace(vision={"dynamic_hd": n})
        for key in ("size", "crop_size"):  # transformers' {"height": 448, "width": 448}
            size = d.get(key)
            if isinstance(size, dict):
                side = size.get("height", size.get("shortest_edge"))
                if size.get("width", side) != side:
                    raise CheckpointError(f"{key} {size} is not square (crops are square)", where)
                d = {**d, "crop_size": side}
        for field, want in [*_IMAGE_FIXED.items(), *_AUDIO_FIXED.items()]:
            if field in d and _differs(d[field], want(config)):
                raise CheckpointError(f"{field} is {d[field]!r} but this model / molora's front end uses "
                                      f"{want(config)!r}", where)
        read.append(name.split(" ")[0])
    return config, sorted(set(read))


def _differs(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) > 1e-9 * max(1.0, abs(b))
    return a != b


def read_chat_template(directory: Path, tokenizer=None) -> str | None:
    """The repository's chat template: processor level first, then the tokenizer's."""
    if (directory / CHAT_TEMPLATE_JSON).exists():
        template = _json(directory / CHAT_TEMPLATE_JSON).get("chat_template")
        if template:
            return template
    if (directory / PROCESSOR).exists():
        template = _json(directory / PROCESSOR).get("chat_template")
        if template:
            return template
    return getattr(tokenizer, "chat_template", None) or None


# -- written for transformers' Phi4MultimodalProcessor ---------------------------------------------------

TOKENIZER_CONFIG = "tokenizer_config.json"


def transformers_processor_config(config: MoLoRAConfig) -> dict:
    """``processor_config.json`` as transformers' ``Phi4MultimodalProcessor.save_pretrained`` writes it:
    its image processor and feature extractor, built with this model's crop, crops per image and audio
    rates, each described by its own ``to_dict()``."""
    from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalImageProcessor

    v, a = config.vision, config.audio
    image = Phi4MultimodalImageProcessor(size={"height": v.crop, "width": v.crop}, patch_size=v.patch_size,
                                         dynamic_hd=v.dynamic_hd)
    audio = Phi4MultimodalFeatureExtractor(feature_size=a.num_mel_bins, sampling_rate=a.sampling_rate,
                                           audio_compression_rate=a.time_reduction,
                                           audio_downsample_rate=a.downsample_rate)
    return {"processor_class": "Phi4MultimodalProcessor", "image_processor": image.to_dict(),
            "audio_processor": audio.to_dict()}


def media_tokens(config: MoLoRAConfig, tokenizer) -> dict[str, str]:
    """``{"image_token": ..., "audio_token": ...}``: the tokenizer's strings for the placeholder ids."""
    out = {}
    for name, token_id in (("image_token", config.backbone.image_token_id), ("audio_token", config.backbone.audio_token_id)):
        token = tokenizer.convert_ids_to_tokens(token_id) if token_id < len(tokenizer) else None
        if token:
            out[name] = token
    return out


def write_transformers_files(directory: Path, config: MoLoRAConfig, tokenizer=None) -> list[str]:
    """``processor_config.json`` for transformers' processor, and the media tokens added to the
    ``tokenizer_config.json`` the tokenizer wrote; returns the names written. Nothing without a tokenizer
    (transformers' processor needs one), nor into a folder holding an official-layout model (``phi4mm``:
    it keeps its own processor files)."""
    config_json = directory / "config.json"
    if tokenizer is None or (config_json.exists() and _json(config_json).get("model_type") == "phi4mm"):
        return []
    (directory / PROCESSOR).write_text(json.dumps(transformers_processor_config(config), indent=2) + "\n")
    written = [PROCESSOR]
    tokenizer_config = directory / TOKENIZER_CONFIG
    if tokenizer_config.exists():
        d = _json(tokenizer_config)
        d.update(media_tokens(config, tokenizer))  # transformers reads *_token keys as the tokenizer's attributes
        tokenizer_config.write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n")
        written.append(TOKENIZER_CONFIG)
    return written
