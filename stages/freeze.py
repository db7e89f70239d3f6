"""Freeze plans: which components of a MoLoRAModel train in a stage (the rest stay frozen).

A component is a named set of parameters; a plan is a list of component names. Components
follow the model's parts, so a plan reads like the report's description of a stage.
"""
from __future__ import annotations

import re

from molora.errors import ConfigError

# component -> regex on parameter names (molora's layout): the decoder's, then each modality's
# (molora/modalities: ``Modality.components``); ``<adapter>_lora`` and ``<name>_audio_projector``
# name the further adapters and audio projectors a config adds
DECODER_COMPONENTS = {
    "vision_lora": r"language_model\..*\.lora_[AB]\.vision\.",
    "speech_lora": r"language_model\..*\.lora_[AB]\.speech\.",
    "llm": r"(language_model\.(?!.*\.lora_[AB]\.)|lm_head\.)",
}


def components() -> dict[str, str]:
    from molora.modalities import MODALITIES

    out = {}
    for entry in MODALITIES.values():
        out.update(entry.components())
    return {**out, **DECODER_COMPONENTS}
# parameters that exist but are never trained: SigLIP's pooling head is not used by the model
NEVER = re.compile(r"image_embed\.img_processor\.(head\.|post_layernorm\.)")


def component_of(name: str) -> str:
    for comp, pat in components().items():
        if re.match(pat, name):
            return comp
    m = re.match(r"language_model\..*\.lora_[AB]\.([^.]+)\.", name)
    if m:
        return f"{m.group(1)}_lora"
    m = re.match(r"audio_embed\.audio_projection\.([^.]+)\.", name)
    if m:
        return f"{m.group(1)}_audio_projector"
    return "other"


def unused_parameters(model) -> set[str]:
    """Parameters the forward never reaches: SigLIP's pooling head and post-LayerNorm, and the tower
    layers after ``feature_layer`` (the features are hidden_states[-2], so the last layer is unused)."""
    v = model.config.vision
    first_unused = v.num_hidden_layers + 1 + v.feature_layer if v.feature_layer < 0 else v.feature_layer
    out = set()
    for name, _ in model.named_parameters():
        if NEVER.match(name):
            out.add(name)
        m = re.match(r"image_embed\.img_processor\.encoder\.layers\.(\d+)\.", name)
        if m and int(m.group(1)) >= first_unused:
            out.add(name)
    return out


def apply_plan(model, train: list[str]) -> dict[str, list[str]]:
    """Set requires_grad from the plan; returns {component: [param names]} for every component."""
    known = set(components()) | {component_of(n) for n, _ in model.named_parameters()}
    unknown = [c for c in train if c not in known]
    if unknown:
        raise ConfigError(f"unknown component(s) {unknown}; known: {sorted(known - {'unused', 'other'})}", "freeze plan")
    if "llm" in train:
        raise ConfigError("the language model stays frozen in every molora stage (train its LoRAs instead)",
                          "freeze plan")
    unused = unused_parameters(model)
    groups: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        comp = "unused" if name in unused else component_of(name)
        groups.setdefault(comp, []).append(name)
        p.requires_grad_(comp in train)
    return groups


def parameter_table(model, train: list[str]) -> str:
    """A table of trainable / frozen parameters per component (printed at the start of a run)."""
    rows: dict[str, list[int]] = {}
    unused = unused_parameters(model)
    for name, p in model.named_parameters():
        comp = "unused" if name in unused else component_of(name)
        r = rows.setdefault(comp, [0, 0])
        r[0 if p.requires_grad else 1] += p.numel()
    lines = [f"{'component':26s} {'trainable':>14s} {'frozen':>14s}"]
    tot = [0, 0]
    for comp in sorted(rows):
        t, f = rows[comp]
        tot[0] += t
        tot[1] += f
        lines.append(f"{comp:26s} {t:>14,d} {f:>14,d}")
    lines.append(f"{'total':26s} {tot[0]:>14,d} {tot[1]:>14,d}")
    return "\n".join(lines)
