"""MoLoRAConfig: one nested, JSON-serialisable description of a Mixture-of-LoRAs model.

Sections: ``backbone`` (the frozen Phi-4-mini decoder), ``vision`` (SigLIP tower, HD
transform, projector), ``audio`` (log-mel front end, conformer), ``adapters`` (one LoRA spec
per adapter name) and ``router`` (input type -> adapter and audio projector).

Presets: ``phi4-multimodal`` (the published shapes, from the official config.json),
``small`` (proportioned like the real model, for benchmarks) and ``tiny`` (the embedded
default, a few layers and a byte-level tokenizer).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_types import check_fields
from .errors import ConfigError

# Phi-4-multimodal-instruct's LongRoPE factors (config.json of the official checkpoint).
PHI4_LONG_FACTOR = [
    1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817,
    2.187582649, 2.446418898, 2.735880826, 3.059592084, 3.421605075, 3.826451687,
    4.279200023, 4.785517845, 5.351743533, 5.984965424, 6.693110555, 7.485043894,
    8.370679318, 9.36110372, 10.4687158, 11.70738129, 13.09260651, 14.64173252,
    16.37415215, 18.31155283, 20.47818807, 22.90118105, 25.61086418, 28.64115884,
    32.03, 32.1, 32.13, 32.23, 32.6, 32.61, 32.64, 32.66, 32.7, 32.71, 32.93, 32.97,
    33.28, 33.49, 33.5, 44.16, 47.77,
]


@dataclass
class BackboneConfig:
    """The decoder (default: Phi-4-mini, Phi-3 architecture: fused qkv / gate_up, partial LongRoPE)."""

    family: str = "phi3"  # molora/backbones (phi3 | llama | qwen2): how the decoder is built, read and written
    vocab_size: int = 200064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_hidden_layers: int = 32
    num_attention_heads: int = 24
    num_key_value_heads: int = 8
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.75
    rope_type: str = "longrope"  # "longrope" or "default"
    short_factor: list[float] | None = field(default_factory=lambda: [1.0] * 48)
    long_factor: list[float] | None = field(default_factory=lambda: list(PHI4_LONG_FACTOR))
    original_max_position_embeddings: int = 4096
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = True
    bos_token_id: int = 199999
    pad_token_id: int = 199999
    eos_token_ids: list[int] = field(default_factory=lambda: [200020, 199999])
    image_token_id: int = 200010
    audio_token_id: int = 200011
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    pretrained: str | None = None  # Phi-4-mini checkpoint dir or hub id to start from

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class VisionConfig:
    """SigLIP tower + Phi-4-multimodal HD transform + projector."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 448  # the tower's position grid (image_size / patch_size per side); the crop size too
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    feature_layer: int = -2  # hidden_states[-2]: output of the second-to-last layer
    dynamic_hd: int = 36  # max crops per image
    max_image_pixels: int = 64_000_000  # decompression-bomb guard (W*H of the decoded image)
    pretrained: str | None = None  # open_clip SigLIP checkpoint to start the tower from
    # HD crop side when it differs from image_size (transformers' vision_config.crop_size): crops
    # then take positions bucketised onto the image_size grid, as transformers computes them
    crop_size: int | None = None

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def crop(self) -> int:
        """The side of each HD crop in pixels."""
        return self.image_size if self.crop_size is None else self.crop_size


@dataclass
class AudioConfig:
    """Log-mel front end + conformer encoder (field names follow transformers' audio config)."""

    sampling_rate: int = 16000
    num_mel_bins: int = 80
    mel_filter: str = "original"  # "original" (the checkpoint's) or "transformers"
    max_audio_seconds: float = 1800.0
    hidden_size: int = 1024
    intermediate_size: int = 1536
    num_blocks: int = 24
    num_attention_heads: int = 16
    activation: str = "swish"
    chunk_size: int = -1
    left_chunk: int = 18
    dropout_rate: float = 0.0
    ext_pw_out_channel: int = 1024
    depthwise_separable_out_channel: int = 1024
    depthwise_multiplier: int = 1
    kernel_size: int = 3
    conv_activation: str = "swish"
    input_size: int = 80
    conv_glu_type: str = "swish"
    time_reduction: int = 8
    bias_max_distance: int = 500
    bias_symmetric: bool = False
    nemo_activation: str = "relu"
    nemo_conv_channels: int = 1024
    downsample_rate: int = 1
    max_seq_len: int = 500  # encoder window after subsampling (frames); longer input is split


@dataclass
class LoraSpec:
    """One LoRA adapter on the decoder's linear layers, with PEFT's meaning for every field.

    Decoder linears are named as PEFT sees them on the public models
    (``model.layers.N.self_attn.qkv_proj``, ``model.layers.N.mlp.down_proj``, ...).
    ``target_modules``: the linears adapted in every layer, by their last name (None, the default:
    every projection of the backbone family, ``molora/backbones``; ``MoLoRAConfig`` writes the
    names in); ``modules``, when
    set, lists exactly which linears carry the adapter (an adapter folder whose targets are a
    regex or ``layers_to_transform``); ``rank_pattern`` / ``alpha_pattern`` give some linears
    another rank / alpha (keys are regexes matched against the end of the name, as PEFT does);
    ``use_rslora`` scales by alpha / sqrt(r) instead of alpha / r.
    """

    r: int
    alpha: float
    dropout: float = 0.0
    target_modules: list[str] | None = None
    modules: list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.scaling_for(self.r, self.alpha)

    def scaling_for(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def adapts(self, name: str) -> bool:
        """Whether the decoder linear ``name`` (PEFT's name) carries this adapter."""
        if self.modules is not None:
            return name in self.modules
        if self.target_modules is None:
            raise ValueError("target_modules is not resolved yet: a LoraSpec gets its backbone family's "
                             "projections inside a MoLoRAConfig")
        return name.rsplit(".", 1)[-1] in self.target_modules

    def rank_alpha(self, name: str) -> tuple[int, float]:
        """(rank, alpha) of the decoder linear ``name``: the first matching pattern, else r / alpha."""
        r = next((v for k, v in self.rank_pattern.items() if _pattern_matches(k, name)), self.r)
        alpha = next((v for k, v in self.alpha_pattern.items() if _pattern_matches(k, name)), self.alpha)
        return int(r), float(alpha)


def _pattern_matches(pattern: str, name: str) -> bool:
    """PEFT's rule for rank_pattern / alpha_pattern keys: the key matches the end of the name."""
    return re.match(rf"(.*\.)?({pattern})$", name) is not None


@dataclass
class RouterEntry:
    """One entry of ``MoLoRAConfig.router``: what one input type uses, a LoRA adapter (or None) and an
    audio projector (or None). Per call, the model turns it into a ``TokenRoute`` (``adapters/route.py``)."""

    adapter: str | None
    audio_projector: str | None = None


def _reference_adapters() -> dict[str, LoraSpec]:
    return {"vision": LoraSpec(r=256, alpha=512, dropout=0.0), "speech": LoraSpec(r=320, alpha=640, dropout=0.01)}


def _reference_router() -> dict[str, RouterEntry]:
    return {
        "text": RouterEntry(adapter=None, audio_projector="speech"),
        "image": RouterEntry(adapter="vision", audio_projector=None),
        "speech": RouterEntry(adapter="speech", audio_projector="speech"),
        "image+speech": RouterEntry(adapter="vision", audio_projector="vision"),
    }


_SECTIONS = {"backbone": BackboneConfig, "vision": VisionConfig, "audio": AudioConfig}


def _check_types(d: dict) -> None:
    """Every value of a config dict (``MoLoRAConfig.to_dict()``'s form) has its field's type."""
    if not isinstance(d, dict):
        raise ConfigError(f"must be an object {{section: {{...}}}}, got {type(d).__name__}", "config")
    for name, section in _SECTIONS.items():
        check_fields(d.get(name, {}), section, f"{name}.")
    for name, entry in (("adapters", LoraSpec), ("router", RouterEntry)):
        group = d.get(name, {})
        if not isinstance(group, dict):
            raise ConfigError(f"must be an object {{name: {{...}}}}, got {type(group).__name__}", name)
        for key, value in group.items():
            check_fields(value, entry, f"{name}.{key}.")
    check_fields(d, MoLoRAConfig, names={k: k for k in ("audio_projectors", "modalities", "tokenizer", "name")})


@dataclass
class MoLoRAConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    adapters: dict[str, LoraSpec] = field(default_factory=_reference_adapters)
    router: dict[str, RouterEntry] = field(default_factory=_reference_router)
    audio_projectors: list[str] = field(default_factory=lambda: ["speech", "vision"])
    # input modalities (molora/modalities), in the order their names join into input types
    # ("image+speech"); each maps to its own settings (image and audio keep theirs in ``vision`` / ``audio``)
    modalities: dict[str, dict] = field(default_factory=lambda: {"image": {}, "audio": {}})
    tokenizer: str | None = None  # "bytes" for the tiny byte-level tokenizer, or a path / hub id
    name: str = "custom"

    def __post_init__(self):
        self.validate()

    # -- validation --------------------------------------------------------------------
    def validate(self) -> None:
        from .backbones import family

        b = self.backbone
        linears = family(b.family).adapted_by_default
        for name, spec in self.adapters.items():
            if spec.target_modules is None:  # a copy: the caller's spec may serve another family's config too
                spec = self.adapters[name] = dataclasses.replace(spec, target_modules=list(linears))
            unknown = [t for t in spec.target_modules if t not in linears]
            if unknown:
                raise ConfigError(f"{unknown} are not linears of a {b.family} decoder layer (those are {linears})",
                                  f"adapters[{name!r}].target_modules")
        if b.hidden_size % b.num_attention_heads:
            raise ConfigError("hidden_size must be divisible by num_attention_heads", "backbone")
        if b.num_attention_heads % b.num_key_value_heads:
            raise ConfigError("num_attention_heads must be a multiple of num_key_value_heads", "backbone")
        rot = int(b.head_dim * b.partial_rotary_factor)
        if b.rope_type == "longrope":
            for name in ("short_factor", "long_factor"):
                f = getattr(b, name)
                if f is None or len(f) != rot // 2:
                    raise ConfigError(
                        f"{name} has {'no' if f is None else len(f)} entries but hidden_size {b.hidden_size} / "
                        f"num_attention_heads {b.num_attention_heads} x partial_rotary_factor "
                        f"{b.partial_rotary_factor} gives {rot} rotary dims, so {rot // 2} are needed: one of "
                        f"these fields is wrong", "backbone")
        for t, route in self.router.items():
            if route.adapter is not None and route.adapter not in self.adapters:
                raise ConfigError(f"routes to unknown adapter {route.adapter!r}", f"router[{t!r}]")
            if route.audio_projector is not None and route.audio_projector not in self.audio_projectors:
                raise ConfigError(f"routes to unknown audio projector {route.audio_projector!r}", f"router[{t!r}]")
        for t in self.input_types():
            if t not in self.router:
                raise ConfigError("no route for this input type (every combination of the modalities needs one)",
                                  f"router[{t!r}]")
        if self.vision.image_size % self.vision.patch_size:
            raise ConfigError("image_size must be a multiple of patch_size", "vision")

    # -- routing helpers ---------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.adapters)

    def modality_entries(self) -> list:
        from .modalities import modality

        return [modality(name) for name in self.modalities]

    def input_types(self) -> list[str]:
        """Every input type a row can have: "text" and each combination of the modalities' names."""
        import itertools

        names = [m.input_type for m in self.modality_entries()]
        return ["text"] + ["+".join(c) for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_type"] = "molora"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MoLoRAConfig":
        _check_types(d)
        d = copy.deepcopy(d)
        for key in ("model_type", "torch_dtype", "dtype"):  # config.json's file-level fields
            d.pop(key, None)
        try:
            return cls(
                backbone=BackboneConfig(**d.pop("backbone", {})),
                vision=VisionConfig(**d.pop("vision", {})),
                audio=AudioConfig(**d.pop("audio", {})),
                adapters={k: LoraSpec(**v) for k, v in d.pop("adapters", {}).items()},
                router={k: RouterEntry(**v) for k, v in d.pop("router", {}).items()},
                **d,
            )
        except TypeError as e:
            raise ConfigError(f"unknown or missing field ({e})", "config") from None

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "MoLoRAConfig":
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text()
        return cls.from_dict(json.loads(text))

    def replace(self, **sections) -> "MoLoRAConfig":
        """Copy with some sections or fields replaced: ``cfg.replace(backbone={"num_hidden_layers": 2})``.
        The fields of ``backbone`` / ``vision`` / ``audio`` merge into the section; ``adapters``,
        ``router`` and ``modalities`` are replaced whole (the mapping given is the model's: an image-only
        model is ``cfg.replace(modalities={"image": {}})``)."""
        d = self.to_dict()
        for k, v in sections.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict) and k not in ("adapters", "router", "modalities"):
                d[k].update(v)
            else:
                d[k] = v if not dataclasses.is_dataclass(v) else dataclasses.asdict(v)
        if "adapters" in sections:
            d["adapters"] = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in sections["adapters"].items()}
        if "router" in sections:
            d["router"] = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in sections["router"].items()}
        return MoLoRAConfig.from_dict(d)

    @classmethod
    def preset(cls, name: str) -> "MoLoRAConfig":
        from .presets import PRESETS

        if name not in PRESETS:
            raise ConfigError(f"unknown preset; choose one of {sorted(PRESETS)}", f"preset {name!r}")
        return PRESETS[name]()
