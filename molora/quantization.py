"""A quantised frozen base: which quantisation (`QuantizationSpec`, from a string or transformers'
configs) and where it goes (`quantize_frozen_base`).

Only the frozen decoder's linears are quantised (the base weight inside each routed LoRA linear, and
the decoder linears no adapter adapts), and with ``include_encoders`` the linears of the frozen
encoder towers (SigLIP, conformer). LoRA weights, projectors, norms, embeddings and the output head
keep their dtype. The kernels are torch's own (`molora/quantized_linear.py`): neither torchao nor
bitsandbytes is needed, and transformers' config objects are read by their attributes, so they are
accepted without those libraries installed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from .adapters.lora import RoutedLoRALinear
from .errors import ConfigError
from .quantized_linear import SCHEMES, QuantizedLinear

__all__ = ["QuantizationSpec", "frozen_base_linears", "quantize_frozen_base", "quantized_linears"]

# the frozen encoder tower inside each modality's embedder (its projector stays in its dtype)
ENCODER_TOWERS = {"image_embed": "img_processor", "audio_embed": "encoder"}
_TORCHAO_TYPES = {"int8_weight_only": "int8", "int4_weight_only": "int4",
                  "Int8WeightOnlyConfig": "int8", "Int4WeightOnlyConfig": "int4"}


@dataclass(frozen=True)
class QuantizationSpec:
    scheme: str  # int8 | int4 | nf4
    group_size: int = 128  # int4: scale and zero per this many inputs
    block_size: int = 64  # nf4: absmax per this many inputs
    include_encoders: bool = False

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown quantisation {self.scheme!r}; use one of {SCHEMES}", "quantization")

    @classmethod
    def of(cls, value, include_encoders: bool | None = None) -> "QuantizationSpec | None":
        """``value``: None, a spec, "int8" / "int4" / "nf4", a dict of the spec's fields, transformers'
        ``TorchAoConfig`` (int8 / int4 weight-only) or ``BitsAndBytesConfig`` (4-bit nf4, or 8-bit)."""
        spec = _read(value)
        if spec is not None and include_encoders is not None:
            spec = cls(**{**asdict(spec), "include_encoders": bool(include_encoders)})
        return spec

    def to_dict(self) -> dict:
        return asdict(self)


def _read(value) -> QuantizationSpec | None:
    if value is None or isinstance(value, QuantizationSpec):
        return value
    if isinstance(value, str):
        name = value.strip().lower()
        if name in ("", "none", "bf16", "bfloat16"):
            return None
        if name in SCHEMES:
            return QuantizationSpec(name)
        raise ConfigError(f"unknown quantisation {value!r}; use one of {SCHEMES}", "quantization")
    if isinstance(value, dict):
        try:
            return QuantizationSpec(**value)
        except TypeError as e:
            raise ConfigError(f"bad quantisation fields {sorted(value)}: {e}", "quantization") from None
    if hasattr(value, "quant_type"):  # transformers' TorchAoConfig: a name or a torchao config object
        kind = value.quant_type if isinstance(value.quant_type, str) else type(value.quant_type).__name__
        scheme = _TORCHAO_TYPES.get(kind)
        if scheme is None:
            raise ConfigError(f"TorchAoConfig quant_type {kind!r} is not supported; use one of "
                              f"{sorted(_TORCHAO_TYPES)}", "quantization")
        kwargs = getattr(value, "quant_type_kwargs", None) or {}
        group = kwargs.get("group_size", getattr(value.quant_type, "group_size", 128))
        return QuantizationSpec(scheme, group_size=int(group or 128))
    if hasattr(value, "load_in_4bit") or hasattr(value, "load_in_8bit"):  # transformers' BitsAndBytesConfig
        if getattr(value, "load_in_4bit", False):
            kind = getattr(value, "bnb_4bit_quant_type", "fp4")
            if kind != "nf4":
                raise ConfigError(f"BitsAndBytesConfig bnb_4bit_quant_type={kind!r} is not supported; use 'nf4'",
                                  "quantization")
            return QuantizationSpec("nf4")
        if getattr(value, "load_in_8bit", False):
            return QuantizationSpec("int8")
        raise ConfigError("BitsAndBytesConfig asks for neither load_in_4bit nor load_in_8bit", "quantization")
    raise ConfigError(f"cannot quantise with {value!r} ({type(value).__name__}); use 'int8', 'int4', 'nf4', "
                      f"transformers' TorchAoConfig or BitsAndBytesConfig", "quantization")


def frozen_base_linears(model, spec: QuantizationSpec) -> list[tuple[nn.Module, str, nn.Linear, str]]:
    """(owner, attribute, linear, state-dict prefix) of every linear ``spec`` quantises: each frozen decoder
    linear (a routed LoRA linear's base layer, not its adapters) and, with ``include_encoders``, the encoder
    towers' linears (the towers are frozen first). Works on a meta model too (the loader reads the weights
    of these linears one at a time)."""
    roots = [(model.language_model.layers, "language_model.layers.")]
    if spec.include_encoders:
        for embedder, tower in ENCODER_TOWERS.items():
            if hasattr(model, embedder):
                module = getattr(getattr(model, embedder), tower)
                module.requires_grad_(False)  # asked for: a frozen tower
                roots.append((module, f"{embedder}.{tower}."))
    out: list = []
    for root, prefix in roots:
        _collect(root, prefix, out)
    return out


def _collect(module: nn.Module, prefix: str, out: list) -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, RoutedLoRALinear):
            if not child.base_layer.weight.requires_grad:
                out.append((child, "base_layer", child.base_layer, f"{path}.base_layer"))
        elif isinstance(child, nn.Linear):
            if not child.weight.requires_grad:
                out.append((module, name, child, path))
        else:
            _collect(child, path + ".", out)


def quantize_frozen_base(model, spec, read=None) -> list[str]:
    """Quantise ``model``'s frozen decoder linears in place, one at a time (each float weight is freed
    as its quantised layer replaces it), and with ``spec.include_encoders`` the encoder towers'
    (`frozen_base_linears`); returns the module paths replaced. ``spec``: anything `QuantizationSpec.of`
    reads. ``read(key) -> tensor``: the weights of linears still on the meta device, read just before
    each is quantised (the loader's way of never holding the float model whole). Records the spec as
    ``model.quantization``."""
    spec = QuantizationSpec.of(spec)
    if spec is None:
        return []
    if getattr(model, "quantization", None) is not None:
        raise ConfigError(f"the model's base is already quantised ({model.quantization.scheme})", "quantization")
    model.freeze_base()
    done: list[str] = []
    for owner, attribute, linear, path in frozen_base_linears(model, spec):
        if read is not None:
            for name in ("weight", "bias"):
                t = getattr(linear, name)
                if t is not None and t.is_meta:
                    setattr(linear, name, nn.Parameter(read(f"{path}.{name}"), requires_grad=False))
        setattr(owner, attribute, QuantizedLinear.from_linear(linear, spec.scheme, spec.group_size, spec.block_size))
        done.append(path)
    model.quantization = spec
    return done


def quantized_linears(model: nn.Module) -> dict[str, QuantizedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
