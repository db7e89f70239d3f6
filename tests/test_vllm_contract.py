"""Each preset's ``phi4mm`` export against the loader contract of vLLM's Phi4MM, at full size on the
meta device (config.json and the key / shape tables are built as the writer builds them; no weight
is written).

The contract was read from vLLM's sources (facts, written here as data; no vLLM code is used):
- ``vllm/model_executor/models/phi4mm.py`` at commit 42fa4c096d406754b7e5c6d93835fe390487c8af:
  ``Phi4MMForCausalLM.hf_to_vllm_mapper`` (a WeightsMapper: substrings, then prefixes),
  ``load_weights`` (``AutoWeightsLoader(skip_substrs=["lora"])``), the SigLIP-so400m tower built by
  ``get_navit_vision_model(layer_idx=-2)`` (an Idefics2VisionTransformer of fixed shapes, 27 + (-2) + 1
  layers, no post-norm; its loader skips ``head.``, ``post_layernorm.`` and layers past the last),
  ``LlamaModel`` for the decoder, the fixed placeholder ids 200010 / 200011, and the config reads
  (``img_processor`` as a key of VISION_ENCODER_TO_PROCESSING_CONFIG, ``n_embd`` / ``hidden_size``,
  ``vocab_size``, ``tie_word_embeddings``, ``logit_scale``, ``embd_layer["audio_embd_layer"]`` with
  ``embedding_cls`` / ``compression_rate``, ``audio_processor``);
- ``vllm/model_executor/models/phi4mm_audio.py`` at commit c18f82401b9adf40b5a46b0c82301c2da91d82e1
  (``AudioEmbedding``: ``audio_processor["name"] == "cascades"``, ``ConformerEncoder(**audio_processor["config"])``,
  which indexes ``encoder_embedding_config["input_size"]``; ``projection_cls``, ``use_qformer``,
  ``use_conv_downsample``, ``downsample_rate``) and ``phi4mm_utils.py`` at commit
  047281dfe599dd1ad5f0172b08ba466e5a6be794 (the conformer's module shapes);
- ``vllm/lora/peft_helper.py`` at commit e745bafffc44744aa601169f8c6f325e47ca7cd5 (``PEFTHelper``:
  required ``r``, ``lora_alpha``, ``target_modules``; ``bias`` "none", no ``modules_to_save``, no DoRA;
  scaling ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA): ``rank_pattern`` / ``alpha_pattern`` are not read).
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from molora import MoLoRAConfig, MoLoRAModel
from molora.checkpoint import layout_contents, peft_contents
from molora.official_folder import generation_config
from molora.presets import PRESETS

# -- the contract, as data ------------------------------------------------------------------------------

MAPPER_SUBSTR = {"base_layer.": ""}
MAPPER_PREFIX = {  # in this order
    "model.embed_tokens_extend.audio_embed.audio_projection.vision.": "embed_tokens_extend.audio_projection_for_vision.",
    "model.embed_tokens_extend.audio_embed.audio_projection.speech.": "embed_tokens_extend.audio_projection.",
    "model.embed_tokens_extend.audio_embed.": "embed_tokens_extend.",
    "model.embed_tokens_extend.image_embed.": "vision_encoder.",
}
SKIP_SUBSTR = ("lora",)
SIGLIP = {"hidden": 1152, "intermediate": 4304, "layers": 27, "patch": 14, "image": 448}  # fixed in vLLM
VISION_LAYER_IDX = -2
VISION_SKIPPED_PREFIXES = ("head.", "post_layernorm.")
SIGLIP_NAME = "siglip-so400m-patch14-448"  # the one key of VISION_ENCODER_TO_PROCESSING_CONFIG
PLACEHOLDERS = {"image_token_id": 200010, "audio_token_id": 200011}
# ConformerEncoder.__init__'s keyword arguments (audio_processor.config is passed as **kwargs)
CONFORMER_KWARGS = frozenset(
    "input_size chunk_size left_chunk num_lang attention_dim attention_heads linear_units num_blocks dropout_rate "
    "input_layer causal batch_norm cnn_out cnn_layer_norm ext_pw_out_channel ext_pw_kernel_size "
    "depthwise_seperable_out_channel depthwise_multiplier chunk_se kernel_size activation conv_activation "
    "conv_glu_type bias_in_glu linear_glu_in_convm attention_glu_type export extra_layer_output_idx "
    "extra_multi_layer_output_idxs activation_checkpointing relative_attention_bias_args time_reduction "
    "use_pt_scaled_dot_product_attention nemo_conv_settings conv2d_extra_padding "
    "replication_pad_for_subsample_embedding attention_group_size encoder_embedding_config".split())
CONFORMER_REQUIRED = ("input_size", "chunk_size", "left_chunk")
NEMO_FORBIDDEN = ("subsampling_factor", "feat_in", "feat_out")  # set outside nemo_conv_settings
# the decoder (LlamaModel) and the multimodal classes read these top-level keys
DECODER_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling",
                "max_position_embeddings", "original_max_position_embeddings", "partial_rotary_factor",
                "tie_word_embeddings", "embd_layer", "audio_processor", "img_processor")
LORA_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")  # decoder linears vLLM's LoRA layers wrap
PEFT_PREFIX = "base_model.model."
PEFT_REQUIRED = ("r", "lora_alpha", "target_modules")


def vllm_name(key: str) -> str:
    for old, new in MAPPER_SUBSTR.items():
        if old in key:
            key = key.replace(old, new, 1)
    for old, new in MAPPER_PREFIX.items():
        if key.startswith(old):
            key = key.replace(old, new, 1)
    return key


def skipped(name: str) -> bool:
    if any(s in name for s in SKIP_SUBSTR):
        return True
    tower = "vision_encoder.img_processor."
    if not name.startswith(tower):
        return False
    rest = name[len(tower):]
    m = re.match(r"encoder\.layers\.(\d+)\.", rest)
    return rest.startswith(VISION_SKIPPED_PREFIXES) or (m is not None and int(m.group(1)) >= _vision_layers())


def _vision_layers() -> int:
    return SIGLIP["layers"] + VISION_LAYER_IDX + 1


def vllm_parameters(c: dict) -> dict[str, tuple]:
    """The tensors vLLM's Phi4MM built from config.json ``c`` loads, by checkpoint name after the mapper
    (the vision tower's q / k / v before its loader stacks them), with their shapes."""
    d, v = c.get("n_embd", c["hidden_size"]), c["vocab_size"]
    heads, kv, inter = c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    hd = c.get("head_dim", d // heads)
    p = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        p.update({pre + "input_layernorm.weight": (d,), pre + "post_attention_layernorm.weight": (d,),
                  pre + "self_attn.qkv_proj.weight": ((heads + 2 * kv) * hd, d),
                  pre + "self_attn.o_proj.weight": (d, heads * hd),
                  pre + "mlp.gate_up_proj.weight": (2 * inter, d), pre + "mlp.down_proj.weight": (d, inter)})
    if not c["tie_word_embeddings"]:
        p["lm_head.weight"] = (v, d)
    # vision: fixed SigLIP-so400m, projector to the decoder width
    w, tower = SIGLIP["hidden"], "vision_encoder.img_processor."
    linear = lambda name, o, i: {name + ".weight": (o, i), name + ".bias": (o,)}  # noqa: E731
    norm = lambda name, n: {name + ".weight": (n,), name + ".bias": (n,)}  # noqa: E731
    p.update({tower + "embeddings.patch_embedding.weight": (w, 3, SIGLIP["patch"], SIGLIP["patch"]),
              tower + "embeddings.patch_embedding.bias": (w,),
              tower + "embeddings.position_embedding.weight": ((SIGLIP["image"] // SIGLIP["patch"]) ** 2, w)})
    for i in range(_vision_layers()):
        pre = f"{tower}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            p.update(linear(pre + "self_attn." + proj, w, w))
        p.update({**norm(pre + "layer_norm1", w), **norm(pre + "layer_norm2", w),
                  **linear(pre + "mlp.fc1", SIGLIP["intermediate"], w), **linear(pre + "mlp.fc2", w, SIGLIP["intermediate"])})
    p.update({"vision_encoder.glb_GN": (1, 1, w), "vision_encoder.sub_GN": (1, 1, 1, w),
              **linear("vision_encoder.img_projection.0", d, w), **linear("vision_encoder.img_projection.2", d, d)})
    # audio: the conformer of audio_processor.config, the two projectors of embd_layer.audio_embd_layer
    ac, ae = c["audio_processor"]["config"], c["embd_layer"]["audio_embd_layer"]
    a, ff, heads_a = ac["attention_dim"], ac["linear_units"], ac["attention_heads"]
    ext, sep, mult = ac["ext_pw_out_channel"], ac["depthwise_seperable_out_channel"], ac["depthwise_multiplier"]
    k, ek = ac["kernel_size"], ac.get("ext_pw_kernel_size", 1)
    ch = (ac.get("nemo_conv_settings") or {}).get("conv_channels", 256)
    rel = ac["relative_attention_bias_args"]
    enc = "embed_tokens_extend.encoder."
    n_in = ac["encoder_embedding_config"]["input_size"]
    p.update({enc + "encoder_embedding.global_mean": (n_in,), enc + "encoder_embedding.global_invstd": (n_in,),
              enc + "embed.conv.0.weight": (ch, 1, 3, 3), enc + "embed.conv.0.bias": (ch,)})
    stages, freq = int(math.log2(ac["time_reduction"])), ac["input_size"]
    for s in range(stages - 1):  # dw_striding: depthwise k3 s2 + pointwise 1x1 per further halving
        p.update({f"{enc}embed.conv.{2 + 3 * s}.weight": (ch, 1, 3, 3), f"{enc}embed.conv.{2 + 3 * s}.bias": (ch,),
                  f"{enc}embed.conv.{3 + 3 * s}.weight": (ch, ch, 1, 1), f"{enc}embed.conv.{3 + 3 * s}.bias": (ch,)})
    for _ in range(stages):
        freq = (freq + 2 - 3) // 2 + 1
    p.update(linear(enc + "embed.out", a, ch * freq))
    buckets = rel.get("t5_bias_max_distance", 1000) * (1 if rel.get("t5_bias_symmetric", False) else 2)
    p[enc + "relative_attention_bias_layer.bias_values.weight"] = (buckets, heads_a // ac.get("attention_group_size", 1))
    for i in range(ac["num_blocks"]):
        pre = f"{enc}encoders.{i}."
        for f in ("feed_forward_in", "feed_forward_out"):
            p.update({**norm(pre + f + ".layer_norm", a), **linear(pre + f + ".net.0.linear", 2 * ff, a),
                      **linear(pre + f + ".net.2", a, ff)})
        for proj in ("linear_q", "linear_k", "linear_v", "linear_out"):
            p.update(linear(pre + "self_attn." + proj, a, a))
        conv = pre + "conv."
        p.update({**norm(conv + "layer_norm", a), conv + "glu.ext_pw_conv_1d.weight": (2 * ext, a, ek),
                  conv + "glu.ext_pw_conv_1d.bias": (2 * ext,),
                  conv + "dw_sep_conv_1d.dw_conv.weight": (a * mult, 1, k), conv + "dw_sep_conv_1d.dw_conv.bias": (a * mult,),
                  conv + "dw_sep_conv_1d.pw_conv.weight": (sep, a * mult, 1), conv + "dw_sep_conv_1d.pw_conv.bias": (sep,),
                  conv + "ext_pw_conv_1d.weight": (a, ext, ek), conv + "ext_pw_conv_1d.bias": (a,)})
        if ac.get("bias_in_glu", True):
            p.update({conv + "glu.b1": (1, ext, 1), conv + "glu.b2": (1, ext, 1)})
        if ext != a:
            p.update(linear(conv + "ln1", a, ext))
        if sep != a:
            p.update(linear(conv + "ln2", a, sep))
        p.update({**norm(pre + "layer_norm_att", a), **norm(pre + "layer_norm", a)})
    down = 1 if ae.get("use_qformer") or ae.get("use_conv_downsample") else ae.get("downsample_rate", 1)
    for proj in ("audio_projection", "audio_projection_for_vision"):
        p.update({**linear(f"embed_tokens_extend.{proj}.0", d, a * down),
                  **linear(f"embed_tokens_extend.{proj}.2", d, d)})
    return p


def config_violations(c: dict) -> list[str]:
    """What in config.json vLLM's Phi4MM (or the remote code it loads the config with) cannot build from."""
    out = [f"config.json has no '{k}'" for k in DECODER_KEYS if k not in c]
    if out:
        return out
    if c.get("model_type") != "phi4mm" or "AutoConfig" not in (c.get("auto_map") or {}):
        out.append("model_type phi4mm with an auto_map AutoConfig (--trust-remote-code) is needed")
    if c["img_processor"] not in (None, SIGLIP_NAME):
        out.append(f"img_processor {c['img_processor']!r} is not None or {SIGLIP_NAME!r}")
    ap = c["audio_processor"]
    if not isinstance(ap, dict) or ap.get("name") != "cascades" or not isinstance(ap.get("config"), dict):
        return out + ["audio_processor is not {'name': 'cascades', 'config': {...}}"]
    ac = ap["config"]
    out += [f"audio_processor.config.{k} is not a ConformerEncoder argument" for k in sorted(set(ac) - CONFORMER_KWARGS)]
    out += [f"audio_processor.config has no {k}" for k in CONFORMER_REQUIRED if k not in ac]
    if not isinstance(ac.get("encoder_embedding_config"), dict) or "input_size" not in ac["encoder_embedding_config"]:
        out.append("audio_processor.config.encoder_embedding_config['input_size'] is missing")
    if ac.get("input_layer", "nemo_conv") != "nemo_conv" or (ac.get("relative_attention_bias_args") or {}).get("type") != "t5":
        out.append("the conformer needs input_layer nemo_conv and a t5 relative attention bias")
    out += [f"nemo_conv_settings.{k} must not be set" for k in NEMO_FORBIDDEN if k in (ac.get("nemo_conv_settings") or {})]
    ae = (c["embd_layer"] or {}).get("audio_embd_layer")
    if not isinstance(ae, dict) or not {"embedding_cls", "compression_rate"} <= set(ae) or ae.get("projection_cls") != "mlp":
        out.append("embd_layer.audio_embd_layer needs embedding_cls, compression_rate and projection_cls mlp")
    if c.get("attention_bias") or c.get("mlp_bias") or c["hidden_act"] != "silu":
        out.append("the decoder must be bias-free with SiLU")
    rope = c["rope_scaling"]
    if rope is not None:
        rotary = int(c.get("head_dim", c["hidden_size"] // c["num_attention_heads"]) * c["partial_rotary_factor"])
        if any(len(rope.get(f) or ()) != rotary // 2 for f in ("short_factor", "long_factor")):
            out.append(f"rope_scaling factors must have rotary_dim / 2 = {rotary // 2} entries")
    return out


def export_violations(config: dict, weights: dict[str, tuple], adapters: dict, molora_cfg: MoLoRAConfig) -> list[str]:
    out = config_violations(config)
    if out:
        return out
    want = vllm_parameters(config)
    have = {}
    for key, shape in weights.items():
        name = vllm_name(key)
        if not skipped(name):
            if name in have:
                out.append(f"two tensors map to {name}")
            have[name] = shape
    out += [f"missing for vLLM: {n} {want[n]}" for n in sorted(set(want) - set(have))]
    out += [f"vLLM has no parameter {n}" for n in sorted(set(have) - set(want))]
    out += [f"shape of {n}: export {have[n]}, vLLM {want[n]}" for n in sorted(set(have) & set(want)) if have[n] != want[n]]
    b = molora_cfg.backbone
    out += [f"{k} is {getattr(b, k)} but vLLM's placeholder is {v}" for k, v in PLACEHOLDERS.items() if getattr(b, k) != v]
    for name, (ac, tensors) in adapters.items():
        out += [f"{name}-lora/adapter_config.json has no {k}" for k in PEFT_REQUIRED if k not in ac]
        if ac.get("bias", "none") != "none" or ac.get("modules_to_save") or ac.get("use_dora"):
            out.append(f"{name}-lora: bias / modules_to_save / DoRA are refused by vLLM")
        if ac.get("rank_pattern") or ac.get("alpha_pattern"):
            out.append(f"{name}-lora: rank_pattern / alpha_pattern are not applied by vLLM")
        for key, shape in tensors.items():
            m = re.fullmatch(re.escape(PEFT_PREFIX) + r"(.+)\.lora_([AB])\.weight", key)
            module = vllm_name(m.group(1)) if m else None
            base = want.get(f"{module}.weight")
            if m is None or base is None or module.rsplit(".", 1)[-1] not in LORA_LINEARS:
                out.append(f"{name}-lora: {key} names no LoRA-capable linear of vLLM's model")
            elif shape != ((ac["r"], base[1]) if m.group(2) == "A" else (base[0], ac["r"])):
                out.append(f"{name}-lora: {key} has shape {shape}, vLLM expects rank {ac['r']} on {base}")
    return out


# -- the exports -----------------------------------------------------------------------------------------

def _export_tables(name: str):
    cfg = MoLoRAConfig.preset(name)
    with torch.device("meta"):
        model = MoLoRAModel(cfg)
    sd = model.state_dict()
    weights, config = layout_contents(sd, cfg, torch.bfloat16, "phi4mm")
    adapters = {n: (ac, {k: tuple(t.shape) for k, t in tensors.items()}) for n, (ac, tensors) in peft_contents(sd, cfg).items()}
    return cfg, config, {k: tuple(t.shape) for k, t in weights.items()}, adapters


# every preset: the Phi-4-mini presets serve as they are; the others break the contract where vLLM's
# Phi4MM is fixed (the SigLIP-so400m tower; the placeholder ids of the 200k vocabulary)
EXPECTED = {
    "phi4-multimodal": [],
    "phi4-mini-reasoning-multimodal": [],
    "phi4-14b-multimodal": ["image_token_id is 100350 but vLLM's placeholder is 200010",
                            "audio_token_id is 100351 but vLLM's placeholder is 200011"],
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_phi4mm_export_meets_vllm_loader_contract(name):
    cfg, config, weights, adapters = _export_tables(name)
    violations = export_violations(config, weights, adapters, cfg)
    if name in EXPECTED:
        assert violations == EXPECTED[name]
    else:  # tiny / small: another vision tower than the one vLLM builds, and other placeholder ids
        assert all(" vision_encoder." in v or "placeholder" in v for v in violations), violations
        assert any(v.startswith("shape of vision_encoder.img_projection.0.weight") for v in violations)
    assert set(adapters) == set(cfg.adapters) == {"vision", "speech"}


def test_official_config_key_set_and_generation_config():
    """Every key of the official config.json (microsoft/Phi-4-multimodal-instruct, as copied in
    TensorRT-LLM's phi4mm test and read by the remote code) is written, with the model's values."""
    official_top = {"_name_or_path", "architectures", "attention_bias", "attention_dropout", "audio_processor",
                    "auto_map", "bos_token_id", "embd_layer", "embd_pdrop", "eos_token_id", "full_attn_mod",
                    "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "interpolate_factor",
                    "lm_head_bias", "max_position_embeddings", "mlp_bias", "model_type", "num_attention_heads",
                    "num_hidden_layers", "num_key_value_heads", "original_max_position_embeddings", "pad_token_id",
                    "partial_rotary_factor", "resid_pdrop", "rms_norm_eps", "rope_scaling", "rope_theta",
                    "sliding_window", "tie_word_embeddings", "torch_dtype", "use_cache", "vocab_size",
                    "img_processor", "vision_lora", "speech_lora"}
    official_audio = {"activation", "activation_checkpointing", "attention_dim", "attention_heads", "batch_norm",
                      "bias_in_glu", "causal", "chunk_size", "cnn_layer_norm", "conv_activation", "conv_glu_type",
                      "depthwise_multiplier", "depthwise_seperable_out_channel", "dropout_rate",
                      "encoder_embedding_config", "ext_pw_kernel_size", "ext_pw_out_channel", "input_layer",
                      "input_size", "kernel_size", "left_chunk", "linear_units", "nemo_conv_settings", "num_blocks",
                      "relative_attention_bias_args", "time_reduction"}
    official_audio_embd = {"compression_rate", "downsample_rate", "embedding_cls", "enable_gradient_checkpointing",
                           "projection_cls", "use_conv_downsample", "use_qformer"}
    for name in ("phi4-multimodal", "phi4-14b-multimodal", "tiny"):
        cfg, config, _, _ = _export_tables(name)
        assert official_top <= set(config), sorted(official_top - set(config))
        assert set(config["audio_processor"]["config"]) == official_audio
        assert set(config["embd_layer"]["audio_embd_layer"]) == official_audio_embd
        assert config["audio_processor"]["config"]["encoder_embedding_config"] == {"input_size": cfg.audio.input_size}
        assert config["hidden_size"] == cfg.backbone.hidden_size and config["img_processor"] is None
    real = generation_config(MoLoRAConfig.preset("phi4-multimodal"))
    assert real["eos_token_id"] == [200020, 199999] and real["bos_token_id"] == real["pad_token_id"] == 199999
    assert generation_config(MoLoRAConfig.preset("phi4-14b-multimodal"))["eos_token_id"] == [100265, 100257]
