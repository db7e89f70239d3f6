"""Key and config translation between molora's layout and the two public Phi-4-multimodal layouts.

molora's own keys::

    language_model.{embed_tokens,layers.N.*,norm}        decoder; routed linears carry
        ....qkv_proj.base_layer.weight / .lora_A.<adapter>.weight / .lora_B.<adapter>.weight
    image_embed.*                                         official names (img_processor, glb_GN, sub_GN, img_projection.0/.2)
    audio_embed.encoder.*, audio_embed.audio_projection.<name>.{0,2}.*
    lm_head.weight                                        only when embeddings are untied

``phi4mm`` (official): the same with ``model.`` for the decoder and
``model.embed_tokens_extend.`` before image_embed / audio_embed.
``phi4_multimodal`` (transformers-native): no LoRA keys (they live in PEFT folders),
``base_layer.`` stripped, and transformers' renames of encoder/projector modules.
"""
from __future__ import annotations

import re

from .config import AudioConfig, BackboneConfig, LoraSpec, MoLoRAConfig, VisionConfig
from .config_types import check_fields, fits
from .encoders import conformer as _conformer
from .errors import CheckpointError, ConfigError
from .modalities import image_embed as _image_embed
from .peft_adapters import compact_modules

LORA_KEY = re.compile(r"\.lora_[AB]\.")
EXT = "model.embed_tokens_extend."

# -- keys: molora <-> official phi4mm -------------------------------------------------------------


def to_phi4mm_key(k: str) -> str:
    if k.startswith("language_model."):
        return "model." + k[len("language_model."):]
    if k.startswith(("image_embed.", "audio_embed.")):
        return EXT + k
    return k


def from_phi4mm_key(k: str) -> str:
    if k.startswith(EXT):
        return k[len(EXT):]
    if k.startswith("model."):
        return "language_model." + k[len("model."):]
    return k


# -- keys: molora <-> transformers-native phi4_multimodal -------------------------------------------

_PROJ_TO_HF = {"speech": "speech", "vision": "vision_speech"}


def to_transformers_state_dict(sd: dict) -> dict:
    """Base weights only (LoRA keys dropped; see `adapter_state_dicts`)."""
    out, img, aud = {}, {}, {}
    for k, v in sd.items():
        if LORA_KEY.search(k):
            continue
        if k.startswith("language_model."):
            out["model." + k[len("language_model."):].replace(".base_layer.", ".")] = v
        elif k.startswith("image_embed."):
            img[k[len("image_embed."):]] = v
        elif k.startswith("audio_embed.encoder."):
            aud[k[len("audio_embed.encoder."):]] = v
        elif k.startswith("audio_embed.audio_projection."):
            name, idx, rest = k[len("audio_embed.audio_projection."):].split(".", 2)
            which = {"0": "up", "2": "down"}[idx]
            out[f"{EXT}audio_embed.{which}_proj_for_{_PROJ_TO_HF.get(name, name)}.{rest}"] = v
        else:
            out[k] = v
    out.update({f"{EXT}image_embed.{k}": v for k, v in _image_embed.to_transformers_keys(img).items()})
    out.update({f"{EXT}audio_embed.encoder.{k}": v for k, v in _conformer.to_transformers_keys(aud).items()})
    return out


def adapted(config: MoLoRAConfig, peft_name: str) -> bool:
    """Whether some adapter of ``config`` adapts the decoder linear ``peft_name`` (``model.layers.N...``):
    in molora's keys its base weight is then ``<module>.base_layer.weight``."""
    return any(spec.adapts(peft_name) for spec in config.adapters.values())


def from_transformers_state_dict(sd: dict, config: MoLoRAConfig) -> dict:
    """Inverse of `to_transformers_state_dict`; the decoder linears an adapter adapts get ``base_layer.``."""
    out, img, aud = {}, {}, {}
    hf_to_proj = {v: k for k, v in _PROJ_TO_HF.items()}
    for k, v in sd.items():
        if k.startswith(EXT + "image_embed."):
            img[k[len(EXT + "image_embed."):]] = v
        elif k.startswith(EXT + "audio_embed.encoder."):
            aud[k[len(EXT + "audio_embed.encoder."):]] = v
        elif k.startswith(EXT + "audio_embed."):
            m = re.fullmatch(r"(up|down)_proj_for_(\w+?)\.(weight|bias)", k[len(EXT + "audio_embed."):])
            if not m:
                out[k] = v
                continue
            name = hf_to_proj.get(m.group(2), m.group(2))
            out[f"audio_embed.audio_projection.{name}.{'0' if m.group(1) == 'up' else '2'}.{m.group(3)}"] = v
        elif k.startswith("model."):
            rest = k[len("model."):]
            m = re.fullmatch(r"(layers\.\d+\.(?:self_attn|mlp)\.\w+)\.(weight|bias)", rest)
            if m and adapted(config, "model." + m.group(1)):
                rest = f"{m.group(1)}.base_layer.{m.group(2)}"
            out["language_model." + rest] = v
        else:
            out[k] = v
    out.update({f"image_embed.{k}": v for k, v in _image_embed.from_transformers_keys(img).items()})
    out.update({f"audio_embed.encoder.{k}": v for k, v in _conformer.from_transformers_keys(aud).items()})
    return out


# -- configs ---------------------------------------------------------------------------------------

_AUDIO_HF_FIELDS = ["hidden_size", "intermediate_size", "num_blocks", "num_attention_heads", "activation",
                    "chunk_size", "left_chunk", "dropout_rate", "ext_pw_out_channel",
                    "depthwise_separable_out_channel", "depthwise_multiplier", "kernel_size", "conv_activation",
                    "input_size", "conv_glu_type", "time_reduction", "bias_max_distance", "bias_symmetric",
                    "nemo_activation", "nemo_conv_channels", "downsample_rate"]
_VISION_HF_FIELDS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                     "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout", "feature_layer"]


def _rope_dict(b: BackboneConfig) -> dict:
    d = {"rope_type": b.rope_type, "rope_theta": b.rope_theta, "partial_rotary_factor": b.partial_rotary_factor}
    if b.rope_type == "longrope":
        d.update(short_factor=list(b.short_factor), long_factor=list(b.long_factor))
    return d


def _decoder_fields(b: BackboneConfig) -> dict:
    """The decoder's shape fields, named alike in both public config.json formats."""
    return {"vocab_size": b.vocab_size, "hidden_size": b.hidden_size, "intermediate_size": b.intermediate_size,
            "num_hidden_layers": b.num_hidden_layers, "num_attention_heads": b.num_attention_heads,
            "num_key_value_heads": b.num_key_value_heads, "hidden_act": b.hidden_act,
            "max_position_embeddings": b.max_position_embeddings,
            "original_max_position_embeddings": b.original_max_position_embeddings, "rms_norm_eps": b.rms_norm_eps}


def to_transformers_config(cfg: MoLoRAConfig) -> dict:
    b, v, a = cfg.backbone, cfg.vision, cfg.audio
    return {
        "model_type": "phi4_multimodal", "architectures": ["Phi4MultimodalForCausalLM"],
        **_decoder_fields(b), "tie_word_embeddings": b.tie_word_embeddings,
        "rope_parameters": _rope_dict(b), "bos_token_id": b.bos_token_id, "pad_token_id": b.pad_token_id,
        "eos_token_id": list(b.eos_token_ids), "initializer_range": b.initializer_range,
        "vision_config": {**{k: getattr(v, k) for k in _VISION_HF_FIELDS}, "crop_size": v.crop,
                          "image_token_id": b.image_token_id, "model_type": "phi4_multimodal_vision"},
        "audio_config": {**{k: getattr(a, k) for k in _AUDIO_HF_FIELDS}, "audio_token_id": b.audio_token_id,
                         "feature_layer": -2, "model_type": "phi4_multimodal_audio"},
    }


def _backbone_from_flat(d: dict, base: BackboneConfig) -> BackboneConfig:
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    eos = d.get("eos_token_id", base.eos_token_ids)
    eos = list(eos) if isinstance(eos, list) else [eos]
    for special in (200020, 199999):  # generation stops on <|end|> and <|endoftext|> for the real vocabulary
        if d.get("vocab_size", 0) > special and special not in eos:
            eos.append(special)
    rtype = rope.get("rope_type", rope.get("type", "default"))
    rtype = "longrope" if rtype in ("longrope", "su", "yarn") else "default"
    return BackboneConfig(
        vocab_size=d.get("vocab_size", base.vocab_size), hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
        num_attention_heads=d["num_attention_heads"],
        num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
        hidden_act=d.get("hidden_act", "silu"), rms_norm_eps=d.get("rms_norm_eps", 1e-5),
        rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)),
        partial_rotary_factor=rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)),
        rope_type=rtype, short_factor=rope.get("short_factor"), long_factor=rope.get("long_factor"),
        original_max_position_embeddings=d.get("original_max_position_embeddings", 4096),
        max_position_embeddings=d.get("max_position_embeddings", 131072),
        tie_word_embeddings=d.get("tie_word_embeddings", False),
        bos_token_id=d.get("bos_token_id", base.bos_token_id), pad_token_id=d.get("pad_token_id", base.pad_token_id),
        eos_token_ids=eos, image_token_id=(d.get("vision_config") or {}).get("image_token_id", base.image_token_id),
        audio_token_id=(d.get("audio_config") or {}).get("audio_token_id", base.audio_token_id),
        initializer_range=d.get("initializer_range", 0.02),
    )


def from_transformers_config(d: dict, adapters: dict[str, LoraSpec], tokenizer: str | None = None) -> MoLoRAConfig:
    vc, ac = d.get("vision_config") or {}, d.get("audio_config") or {}
    vision = VisionConfig(**{k: vc[k] for k in _VISION_HF_FIELDS if k in vc})
    if vc.get("crop_size", vision.image_size) != vision.image_size:  # transformers' tester: 16-px crops, 448 grid
        vision.crop_size = vc["crop_size"]
    audio = AudioConfig(**{k: ac[k] for k in _AUDIO_HF_FIELDS if k in ac})
    base = MoLoRAConfig().backbone
    return _with_adapters(_backbone_from_flat(d, base), vision, audio, adapters, tokenizer)


def _with_adapters(backbone, vision, audio, adapters, tokenizer) -> MoLoRAConfig:
    ref = MoLoRAConfig()
    router = {t: r for t, r in ref.router.items()}
    for t, r in router.items():  # a layout without an adapter routes its input type to none
        if r.adapter is not None and r.adapter not in adapters:
            r.adapter = None
    return MoLoRAConfig(backbone=backbone, vision=vision, audio=audio, adapters=adapters, router=router,
                        tokenizer=tokenizer, name="loaded")


# config.json of microsoft/Phi-4-multimodal-instruct: the keys the remote code and vLLM's Phi4MM read
# that molora's config does not describe (fixed in the original model), with the official values
_PHI4MM_FIXED = {"attention_bias": False, "attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
                 "full_attn_mod": 1, "interpolate_factor": 1, "lm_head_bias": False, "mlp_bias": False,
                 "img_processor": None, "sliding_window": 262144, "use_cache": True}
# the official auto_map: the config, model and processor classes come from the folder's remote-code modules
PHI4MM_AUTO_MAP = {"AutoConfig": "configuration_phi4mm.Phi4MMConfig",
                   "AutoModelForCausalLM": "modeling_phi4mm.Phi4MMForCausalLM", "AutoTokenizer": "Xenova/gpt-4o"}


def to_phi4mm_config(cfg: MoLoRAConfig) -> dict:
    """config.json of the official layout: every key the official file has (vLLM's Phi4MM and the
    remote code index them), with values derived from ``cfg``; ``molora`` holds molora's own config,
    so shapes the official file cannot describe (another vision tower) round-trip."""
    b, a = cfg.backbone, cfg.audio
    lora = {f"{name}_lora": {"dp": s.dropout, "lora_alpha": s.alpha, "r": s.r, "layer": _phi4mm_layer_regex(s)}
            for name, s in cfg.adapters.items()}
    return {
        "_name_or_path": "Phi-4-multimodal-instruct", "model_type": "phi4mm", "architectures": ["Phi4MMForCausalLM"],
        "auto_map": dict(PHI4MM_AUTO_MAP), **_PHI4MM_FIXED,
        **_decoder_fields(b),
        "rope_theta": b.rope_theta, "partial_rotary_factor": b.partial_rotary_factor,
        "rope_scaling": ({"type": "longrope", "short_factor": list(b.short_factor), "long_factor": list(b.long_factor)}
                         if b.rope_type == "longrope" else None),
        "tie_word_embeddings": b.tie_word_embeddings, "bos_token_id": b.bos_token_id,
        "eos_token_id": b.bos_token_id, "pad_token_id": b.pad_token_id, "initializer_range": b.initializer_range,
        "embd_layer": {"embedding_cls": "image_audio",
                       "image_embd_layer": {"crop_size": cfg.vision.image_size, "embedding_cls": "tune_image",
                                            "enable_gradient_checkpointing": True,
                                            "hd_transform_order": "sub_glb", "image_token_compression_cls": "avg_pool_2d",
                                            "projection_cls": "mlp", "use_hd_transform": True,
                                            "with_learnable_separator": True},
                       "audio_embd_layer": {"compression_rate": a.time_reduction, "downsample_rate": a.downsample_rate,
                                            "embedding_cls": "audio", "enable_gradient_checkpointing": True,
                                            "projection_cls": "mlp", "use_conv_downsample": False,
                                            "use_qformer": False}},
        "audio_processor": {"name": "cascades", "config": {
            "activation": a.activation,
            "activation_checkpointing": {"interval": 1, "module": "transformer", "offload": False},
            "attention_dim": a.hidden_size, "attention_heads": a.num_attention_heads, "batch_norm": False,
            "bias_in_glu": True, "causal": True, "chunk_size": a.chunk_size, "cnn_layer_norm": True,
            "conv_activation": a.conv_activation, "conv_glu_type": a.conv_glu_type,
            "depthwise_multiplier": a.depthwise_multiplier,
            "depthwise_seperable_out_channel": a.depthwise_separable_out_channel, "dropout_rate": a.dropout_rate,
            "encoder_embedding_config": {"input_size": a.input_size}, "ext_pw_kernel_size": 1,
            "ext_pw_out_channel": a.ext_pw_out_channel, "input_layer": "nemo_conv", "input_size": a.input_size,
            "kernel_size": a.kernel_size, "left_chunk": a.left_chunk, "linear_units": a.intermediate_size,
            "nemo_conv_settings": {"conv_channels": a.nemo_conv_channels}, "num_blocks": a.num_blocks,
            "relative_attention_bias_args": {"t5_bias_max_distance": a.bias_max_distance, "type": "t5"},
            "time_reduction": a.time_reduction}},
        **lora,
        "molora": cfg.to_dict(),
    }


def _phi4mm_layer_regex(spec: LoraSpec) -> str:
    """The official config's ``layer`` field: the adapted linears, as the original code names them."""
    if spec.modules is not None:
        return "|".join(re.escape(m[len("model."):]) for m in spec.modules)
    attn = [t for t in spec.target_modules if t in ("qkv_proj", "o_proj")]
    mlp = [t for t in spec.target_modules if t in ("gate_up_proj", "down_proj")]
    parts = ([f"(self_attn\\.({'|'.join(attn)}))"] if attn else []) + ([f"(mlp\\.({'|'.join(mlp)}))"] if mlp else [])
    return f"layers.*({'|'.join(parts)})"


def vision_from_phi4mm(d: dict, shapes: dict[str, tuple] | None = None) -> VisionConfig:
    """The vision tower of an official-layout checkpoint. Its config.json does not describe the tower
    (SigLIP-so400m is fixed in the original code); some exports add an ``img_processor`` section.
    Otherwise the shapes come from the weights (``shapes``: key -> shape), with SigLIP's head width
    of 72 for the head count (16 heads at width 1152)."""
    crop = ((d.get("embd_layer") or {}).get("image_embd_layer") or {}).get("crop_size", 448)
    v = VisionConfig(image_size=crop)
    ip = d.get("img_processor") or d.get("vision_config") or {}
    if isinstance(ip, dict):
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                  "layer_norm_eps"):
            if k in ip:
                setattr(v, k, ip[k])
        if "image_size" in ip:
            v.image_size = ip["image_size"]
    if shapes and not ip:
        pre = f"{EXT}image_embed.img_processor."
        pe = shapes.get(pre + "embeddings.patch_embedding.weight")
        if pe:
            v.hidden_size, v.patch_size = pe[0], pe[-1]
            v.num_attention_heads = max(1, v.hidden_size // 72)
            layers = {int(k[len(pre + "encoder.layers."):].split(".")[0]) for k in shapes
                      if k.startswith(pre + "encoder.layers.")}
            v.num_hidden_layers = len(layers)
            fc1 = shapes.get(pre + "encoder.layers.0.mlp.fc1.weight")
            if fc1:
                v.intermediate_size = fc1[0]
            pos = shapes.get(pre + "embeddings.position_embedding.weight")
            if pos:
                v.image_size = int(round(pos[0] ** 0.5)) * v.patch_size
    return v


# molora's AudioConfig field -> the official config.json's audio_processor.config key
_PHI4MM_AUDIO = {"hidden_size": "attention_dim", "num_attention_heads": "attention_heads",
                 "intermediate_size": "linear_units", "num_blocks": "num_blocks", "input_size": "input_size",
                 "kernel_size": "kernel_size", "ext_pw_out_channel": "ext_pw_out_channel",
                 "depthwise_separable_out_channel": "depthwise_seperable_out_channel",
                 "depthwise_multiplier": "depthwise_multiplier", "time_reduction": "time_reduction",
                 "chunk_size": "chunk_size", "left_chunk": "left_chunk", "activation": "activation",
                 "conv_activation": "conv_activation", "conv_glu_type": "conv_glu_type"}


def from_phi4mm_config(d: dict, tokenizer: str | None = None, shapes: dict[str, tuple] | None = None,
                       where: str = "config.json") -> MoLoRAConfig:
    if "molora" in d:
        return MoLoRAConfig.from_dict(d["molora"])
    ac = (d.get("audio_processor") or {}).get("config", {})
    audio = AudioConfig()
    for ours, theirs in _PHI4MM_AUDIO.items():
        if theirs in ac:
            setattr(audio, ours, ac[theirs])
    audio.nemo_conv_channels = (ac.get("nemo_conv_settings") or {}).get("conv_channels", audio.nemo_conv_channels)
    audio.bias_max_distance = (ac.get("relative_attention_bias_args") or {}).get("t5_bias_max_distance",
                                                                                 audio.bias_max_distance)
    vision = vision_from_phi4mm(d, shapes)
    adapters = phi4mm_adapters(d, shapes, where)
    return _with_adapters(_backbone_from_flat(d, MoLoRAConfig().backbone), vision, audio, adapters, tokenizer)


_PHI4MM_LORA_A = re.compile(r"model\.(layers\.\d+\.(?:self_attn|mlp)\.\w+)\.lora_A\.([^.]+)\.weight")


def phi4mm_adapters(d: dict, shapes: dict[str, tuple] | None, where: str = "config.json") -> dict[str, LoraSpec]:
    """The adapters of an official-layout checkpoint: rank, alpha and dropout from config.json's
    ``<name>_lora`` sections (``r``, ``lora_alpha``, ``dp``); which linears carry them, and a check
    of the ranks, from the weights (``shapes``: key -> shape, headers only) when given."""
    in_weights: dict[str, dict[str, int]] = {}  # adapter -> {PEFT module name: rank of its lora_A}
    for k, shape in (shapes or {}).items():
        m = _PHI4MM_LORA_A.fullmatch(k)
        if m:
            in_weights.setdefault(m.group(2), {})["model." + m.group(1)] = int(shape[0])
    sections = {k[:-len("_lora")]: v for k, v in d.items() if k.endswith("_lora") and isinstance(v, dict)}
    adapters = {}
    for name in dict.fromkeys([*sections, *in_weights]):
        section, ranks = sections.get(name), in_weights.get(name, {})
        if section is None:
            example = next(iter(ranks))
            raise CheckpointError(
                f"config.json has no '{name}_lora' section, but the weights hold a {name} LoRA (rank "
                f"{'/'.join(map(str, sorted(set(ranks.values()))))} on {len(ranks)} linear layers, e.g. "
                f"'{example}.lora_A.{name}.weight'); add \"{name}_lora\": {{\"r\": ..., \"lora_alpha\": ..., "
                f"\"dp\": ...}} (alpha and dropout cannot be read from the weights; Phi-4-multimodal-instruct has "
                f"vision r 256 / alpha 512 / dp 0.0 and speech r 320 / alpha 640 / dp 0.01)", where)
        missing = [k for k in ("r", "lora_alpha") if k not in section]
        if missing:
            raise CheckpointError(f"the '{name}_lora' section has no {' / '.join(missing)}", where)
        spec = LoraSpec(r=int(section["r"]), alpha=float(section["lora_alpha"]), dropout=float(section.get("dp", 0.0)))
        if shapes is not None:
            if not ranks:
                raise CheckpointError(f"config.json has a '{name}_lora' section but the weights hold no {name} LoRA "
                                      f"(no 'model.layers.N.<module>.lora_A.{name}.weight' tensor)", where)
            wrong = next((m for m, r in ranks.items() if r != spec.r), None)
            if wrong is not None:
                raise CheckpointError(f"the '{name}_lora' section says r {spec.r}, but tensor "
                                      f"'{wrong}.lora_A.{name}.weight' has rank {ranks[wrong]}", where)
            phi3 = BackboneConfig(num_hidden_layers=int(d["num_hidden_layers"]))  # the official layout's family
            spec.target_modules, spec.modules = compact_modules(list(ranks), phi3)
        adapters[name] = spec
    return adapters


# -- checks of a public config.json before it is used ------------------------------------------------

_FLAT_BACKBONE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "hidden_act", "rms_norm_eps", "rope_theta", "partial_rotary_factor",
                  "original_max_position_embeddings", "max_position_embeddings", "tie_word_embeddings",
                  "bos_token_id", "pad_token_id", "initializer_range")
_ROPE = {"rope_theta": "rope_theta", "partial_rotary_factor": "partial_rotary_factor",
         "short_factor": "short_factor", "long_factor": "long_factor"}


def _section(d: dict, key: str, label: str | None = None) -> dict:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"must be an object {{key: value}}, got {type(value).__name__}", label or key)
    return value


def check_flat_config(d: dict) -> dict:
    """An official (``phi4mm``) or transformers-native config.json with every field molora reads of
    the type it needs (a ConfigError names the key); null values count as absent."""
    d = {k: v for k, v in d.items() if v is not None}
    check_fields(d, BackboneConfig, names={k: k for k in _FLAT_BACKBONE},
                 required=("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"))
    if "eos_token_id" in d and not fits(d["eos_token_id"], int | list[int]):
        raise ConfigError(f"must be an integer or a list of integers, got {d['eos_token_id']!r}", "eos_token_id")
    _check_sliding_window(d)
    for key in ("rope_parameters", "rope_scaling"):
        rope = _section(d, key)
        check_fields(rope, BackboneConfig, f"{key}.", names=_ROPE)
        for kind in ("rope_type", "type"):
            if kind in rope and not isinstance(rope[kind], str):
                raise ConfigError(f"must be a string, got {rope[kind]!r}", f"{key}.{kind}")
    vc, ac = _section(d, "vision_config"), _section(d, "audio_config")
    check_fields(vc, VisionConfig, "vision_config.", names={**{k: k for k in _VISION_HF_FIELDS}, "crop_size": "crop_size"})
    check_fields(vc, BackboneConfig, "vision_config.", names={"image_token_id": "image_token_id"})
    check_fields(ac, AudioConfig, "audio_config.", names={k: k for k in _AUDIO_HF_FIELDS})
    check_fields(ac, BackboneConfig, "audio_config.", names={"audio_token_id": "audio_token_id"})
    # the official layout's sections
    check_fields(_section(_section(d, "audio_processor"), "config", "audio_processor.config"), AudioConfig,
                 "audio_processor.config.", names=_PHI4MM_AUDIO)
    image = _section(_section(d, "embd_layer"), "image_embd_layer", "embd_layer.image_embd_layer")
    check_fields(image, VisionConfig, "embd_layer.image_embd_layer.", names={"image_size": "crop_size"})
    check_fields(_section(d, "img_processor"), VisionConfig, "img_processor.")
    for key, value in d.items():
        if key.endswith("_lora"):
            check_fields(_section(d, key), LoraSpec, f"{key}.", names={"r": "r", "alpha": "lora_alpha", "dropout": "dp"})
    return d


def _check_sliding_window(d: dict) -> None:
    """transformers' decoder attends within ``sliding_window`` tokens when it is set; molora's attends to
    the whole context, so a window shorter than the context would give other logits past it: refused.
    (The official config's 262144 exceeds its 131072 positions: no effect.)"""
    window = d.get("sliding_window")
    if window is None:
        return
    if not fits(window, int):
        raise ConfigError(f"must be an integer or null, got {window!r}", "sliding_window")
    context = d.get("max_position_embeddings", 131072)
    if window < context:
        raise ConfigError(f"is {window}, shorter than max_position_embeddings {context}: molora's decoder attends to "
                          "the whole context, not a sliding window, so its logits would differ past "
                          f"{window} tokens; set it to null (or >= {context}) if the model was trained without one",
                          "sliding_window")


def check_decoder_shapes(b: dict, shapes: dict[str, tuple], layout: str, section: str = "") -> None:
    """The decoder's shape fields of a config (``b``: flat, as in config.json) against the weights'
    headers: a field the weights contradict is named, with the tensor that shows it."""
    pre = "language_model." if layout == "molora" else "model."
    found = []
    emb = shapes.get(pre + "embed_tokens.weight")
    if emb is not None and len(emb) == 2:
        found += [("vocab_size", emb[0], pre + "embed_tokens.weight", emb),
                  ("hidden_size", emb[1], pre + "embed_tokens.weight", emb)]
    for key in (f"{pre}layers.0.mlp.down_proj.weight", f"{pre}layers.0.mlp.down_proj.base_layer.weight"):
        if len(shapes.get(key) or ()) == 2:
            found.append(("intermediate_size", shapes[key][1], key, shapes[key]))
    layers = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(pre) + r"layers\.(\d+)\.", k))}
    if layers:
        found.append(("num_hidden_layers", max(layers) + 1, f"{pre}layers.{max(layers)}.*", None))
    for field, want, key, shape in found:
        have = b.get(field)
        if isinstance(have, int) and not isinstance(have, bool) and have != want:
            seen = f"{key} has shape {list(shape)}" if shape is not None else f"the last layer is {key}"
            raise ConfigError(f"is {have} but the weights have {want} ({seen})", section + field)
