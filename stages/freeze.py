"""Freeze plans: which components of a MoLoRAModel train in a stage (the rest stay frozen).

A component is a named set of parameters; a plan is a list of component names. Components
follow the model's parts, so a plan reads like the report's description of a stage: the decoder's
(below) and those of each of the model's modalities (``Modality.components``; without a model, e.g.
when a recipe is checked, every registered modality's).
"""
from __future__ import annotations

import re

from molora.errors import ConfigError

# component -> regex on parameter names (molora's layout) of the decoder; ``<adapter>_lora`` names the
# further adapters a config adds (and the audio entry ``<name>_audio_projector`` its further projectors)
DECODER_COMPONENTS = {
    "vision_lora": r"language_model\..*\.lora_[AB]\.vision\.",
    "speech_lora": r"language_model\..*\.lora_[AB]\.speech\.",
    "llm": r"(language_model\.(?!.*\.lora_[AB]\.)|lm_head\.)",
}


def _entries(config=None) -> list:
    """The modality entries of ``config`` (a model's), or every registered one."""
    from molora.modalities import MODALITIES

    return list(MODALITIES.values()) if config is None else config.modality_entries()


def components(config=None) -> dict[str, str]:
    """Component -> regex: each modality's of ``config`` (None: every registered modality), then the decoder's."""
    out = {}
    for entry in _entries(config):
        out.update(entry.components())
    return {**out, **DECODER_COMPONENTS}


def component_of(name: str, config=None) -> str:
    for entry in _entries(config):
        comp = entry.component_of(name)
        if comp is not None:
            return comp
    for comp, pat in DECODER_COMPONENTS.items():
        if re.match(pat, name):
            return comp
    m = re.match(r"language_model\..*\.lora_[AB]\.([^.]+)\.", name)
    if m:
        return f"{m.group(1)}_lora"
    return "other"


def unused_parameters(model) -> set[str]:
    """Parameters the forward never reaches (``Modality.unused_parameters``: e.g. SigLIP's pooling head)."""
    names = [n for n, _ in model.named_parameters()]
    return set().union(*(entry.unused_parameters(names, model.config) for entry in model.config.modality_entries()))


def apply_plan(model, train: list[str]) -> dict[str, list[str]]:
    """Set requires_grad from the plan; returns {component: [param names]} for every component."""
    config = model.config
    known = set(components(config)) | {component_of(n, config) for n, _ in model.named_parameters()}
    unknown = [c for c in train if c not in known]
    if unknown:
        elsewhere = {c: e.name for e in _entries() if e.name not in config.modalities for c in e.components()}
        absent = "".join(f"; {c} is the {elsewhere[c]} modality's, which this model does not have"
                         for c in unknown if c in elsewhere)
        raise ConfigError(f"unknown component(s) {unknown}; known: {sorted(known - {'unused', 'other'})}{absent}",
                          "freeze plan")
    if "llm" in train:
        raise ConfigError("the language model stays frozen in every molora stage (train its LoRAs instead)",
                          "freeze plan")
    unused = unused_parameters(model)
    groups: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        comp = "unused" if name in unused else component_of(name, config)
        groups.setdefault(comp, []).append(name)
        p.requires_grad_(comp in train)
    return groups


def parameter_table(model, train: list[str]) -> str:
    """A table of trainable / frozen parameters per component (printed at the start of a run)."""
    rows: dict[str, list[int]] = {}
    unused = unused_parameters(model)
    for name, p in model.named_parameters():
        comp = "unused" if name in unused else component_of(name, model.config)
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
