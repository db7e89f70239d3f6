"""PEFT adapter folders (``vision-lora/``, ``speech-lora/``): read them as PEFT reads them, write
them so that peft, transformers and vLLM load them unchanged.

Reading follows PEFT's own rules, through peft itself: ``adapter_config.json`` is parsed by
``peft.LoraConfig`` and every decoder linear of the model (named as PEFT sees it on the public
models, ``model.layers.N.self_attn.qkv_proj``) is tested with peft's
``check_target_module_exists``: ``target_modules`` as a list (a name or the end of a name) or as
a regex (``re.fullmatch`` against the whole name), ``layers_to_transform`` / ``layers_pattern``,
``exclude_modules``; ``rank_pattern`` / ``alpha_pattern`` and ``use_rslora`` are kept.
Tensor keys may carry peft's ``base_model.model.`` prefix (``PeftModel.save_pretrained``) or not
(transformers' ``convert_phi4_multimodal_weights_to_hf.py``).

Nothing is dropped silently: a folder whose targets match no decoder linear, a tensor that is
not read, a tensor missing for a targeted linear, a tensor of the wrong rank or shape, or a PEFT
feature molora does not implement (DoRA, LoRA biases, modules_to_save, ...) is a
``CheckpointError`` naming the folder and the key.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .config import BackboneConfig, LoraSpec
from .errors import CheckpointError

PEFT_PREFIX = "base_model.model."
_TENSOR_KEY = re.compile(r"(?P<module>.+)\.(?P<ab>lora_[AB])(?:\.(?P<adapter>[^.]+))?\.weight")
# PEFT features that change the computation; molora implements plain (rs)LoRA on linear layers
_UNSUPPORTED = {"use_dora": "DoRA", "lora_bias": "LoRA biases", "layer_replication": "layer replication",
                "modules_to_save": "modules_to_save (full copies of other modules)",
                "trainable_token_indices": "trainable tokens", "target_parameters": "LoRA on parameters",
                "use_qalora": "QALoRA", "alora_invocation_tokens": "activated LoRA", "use_bdlora": "BD-LoRA",
                "arrow_config": "Arrow routing", "kasa_config": "KaSA", "velora_config": "VeLoRA"}


# -- the decoder linears, as PEFT names them ------------------------------------------------------

def decoder_linears(b: BackboneConfig) -> dict[str, tuple[int, int]]:
    """PEFT name -> (out_features, in_features) of every linear layer of the decoder."""
    from .backbones import family

    fam = family(b.family)
    shape = fam.linear_shapes(b)
    return {f"model.layers.{i}.{block}.{name}": shape[name]
            for i in range(b.num_hidden_layers) for block, name in fam.linears}


def compact_modules(modules: list[str], b: BackboneConfig) -> tuple[list[str], list[str] | None]:
    """(target_modules, modules) for a LoraSpec adapting exactly ``modules``: the short form
    (names adapted in every layer, modules=None) when that describes them."""
    every_linear = decoder_linears(b)
    order = [name.rsplit(".", 1)[-1] for name in every_linear]
    names = sorted({m.rsplit(".", 1)[-1] for m in modules}, key=order.index)
    every = {m for m in every_linear if m.rsplit(".", 1)[-1] in names}
    return (names, None) if set(modules) == every else (names, sorted(modules, key=_layer_order))


def _layer_order(name: str):
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


# -- reading -------------------------------------------------------------------------------------

def read_peft_config(folder: Path):
    """``adapter_config.json`` parsed by peft (its defaults, its validation)."""
    from peft import LoraConfig

    try:
        cfg = LoraConfig.from_pretrained(str(folder))
    except Exception as e:  # missing file, invalid JSON, a combination peft refuses
        raise CheckpointError(f"adapter_config.json cannot be read as a LoRA config ({type(e).__name__}: {e})",
                              str(folder)) from None
    peft_type = getattr(cfg.peft_type, "value", cfg.peft_type)
    if str(peft_type) != "LORA":
        raise CheckpointError(f"peft_type is {peft_type!r}; molora reads LoRA adapters only",
                              f"{folder}/adapter_config.json")
    for field_name, what in _UNSUPPORTED.items():
        if getattr(cfg, field_name, None):
            raise CheckpointError(f"{field_name} is set: {what} is not supported (plain LoRA / rsLoRA only)",
                                  f"{folder}/adapter_config.json")
    if cfg.bias != "none":
        raise CheckpointError(f"bias is {cfg.bias!r}: trained biases are not supported (only 'none')",
                              f"{folder}/adapter_config.json")
    return cfg


def spec_from_peft_folder(folder: Path, backbone: BackboneConfig) -> LoraSpec:
    """The LoraSpec of a PEFT folder: the decoder linears its config targets, as peft decides."""
    from peft.tuners.tuners_utils import check_target_module_exists

    cfg = read_peft_config(folder)
    linears = decoder_linears(backbone)
    matched = [name for name in linears if check_target_module_exists(cfg, name)]
    if not matched:
        raise CheckpointError(
            f"target_modules {cfg.target_modules!r} (layers_to_transform {cfg.layers_to_transform!r}) matches "
            f"none of the decoder's linear layers (PEFT names such as {next(iter(linears))})",
            f"{folder}/adapter_config.json")
    targets, modules = compact_modules(matched, backbone)
    return LoraSpec(r=int(cfg.r), alpha=float(cfg.lora_alpha), dropout=float(cfg.lora_dropout),
                    target_modules=targets, modules=modules, rank_pattern=dict(cfg.rank_pattern or {}),
                    alpha_pattern=dict(cfg.alpha_pattern or {}), use_rslora=bool(cfg.use_rslora))


def adapter_tensors(folder: Path, name: str, spec: LoraSpec, backbone: BackboneConfig,
                    tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """molora keys (``language_model.<module>.lora_{A,B}.<name>.weight``) for the tensors of a PEFT
    folder; every tensor must be read and every targeted linear must get both of its tensors."""
    linears = decoder_linears(backbone)
    targeted = [m for m in linears if spec.adapts(m)]
    where = f"{folder}/adapter_model.safetensors"
    found: dict[tuple[str, str], str] = {}
    prefixed = None
    out = {}
    for key, value in tensors.items():
        bare = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        m = _TENSOR_KEY.fullmatch(bare)
        if m is None or m.group("module") not in linears or not spec.adapts(m.group("module")):
            why = ("not a LoRA A/B weight" if m is None else
                   "a LoRA on a module molora does not adapt (the decoder's linear layers only)"
                   if m.group("module") not in linears else "a linear layer adapter_config.json does not target")
            raise CheckpointError(f"tensor {key!r} is not read: {why}", where)
        module, ab = m.group("module"), m.group("ab")
        if (module, ab) in found:
            raise CheckpointError(f"tensor {key!r} repeats {found[module, ab]!r}", where)
        found[module, ab] = key
        prefixed = key.startswith(PEFT_PREFIX) if prefixed is None else prefixed
        r, _ = spec.rank_alpha(module)
        out_f, in_f = linears[module]
        want = (r, in_f) if ab == "lora_A" else (out_f, r)
        if tuple(value.shape) != want:
            raise CheckpointError(f"tensor {key!r} has shape {tuple(value.shape)}, expected {want} "
                                  f"(rank {r} from adapter_config.json, layer {out_f}x{in_f})", where)
        out[f"language_model.{module[len('model.'):]}.{ab}.{name}.weight"] = value
    for module in targeted:
        for ab in ("lora_A", "lora_B"):
            if (module, ab) not in found:
                key = f"{PEFT_PREFIX if prefixed else ''}{module}.{ab}.weight"
                raise CheckpointError(f"tensor {key!r} is missing (adapter_config.json targets {module})", where)
    return out


# -- writing -------------------------------------------------------------------------------------

def adapter_state_dicts(sd: dict) -> dict[str, dict]:
    """{adapter: {peft key: tensor}} from molora keys (peft's keys carry no adapter name)."""
    out: dict[str, dict] = {}
    for k, v in sd.items():
        m = re.fullmatch(r"language_model\.(.+)\.(lora_[AB])\.([^.]+)\.weight", k)
        if m:
            out.setdefault(m.group(3), {})[f"{PEFT_PREFIX}model.{m.group(1)}.{m.group(2)}.weight"] = v
    return out


def peft_target_regex(spec: LoraSpec) -> str:
    """Decoder linears only: a bare name list would also hit transformers' conformer modules
    (its feed-forward ``gate_up_proj`` / ``down_proj`` and attention ``o_proj``)."""
    if spec.modules is not None:
        return "|".join(re.escape(m) for m in spec.modules)
    return r"(.*\.)?layers\.\d+\.(self_attn|mlp)\.(" + "|".join(spec.target_modules) + ")"


def peft_config(name: str, spec: LoraSpec, base: str | None = None) -> dict:
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": spec.r, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "bias": "none",
        "target_modules": peft_target_regex(spec), "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "layers_to_transform": None, "modules_to_save": None,
        "rank_pattern": dict(spec.rank_pattern), "alpha_pattern": dict(spec.alpha_pattern),
        "use_rslora": spec.use_rslora, "use_dora": False,
    }
