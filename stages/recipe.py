"""Recipes: YAML files that say what a training run does (stage, model, data, schedule, plan).

A recipe opens with the exact command that runs it. ``load_recipe(name_or_path, overrides)``
reads a packaged recipe by name (``stages/recipes/NAME.yaml``) or any YAML path, then applies
``key=value`` overrides (dotted keys reach nested sections: ``data.train=PATH``,
``training.lr=3e-4``; the common ones are top level: ``max_steps``, ``save_every``, ``seed``).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from molora.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"
STAGES = ("vision", "speech", "joint", "sft", "dpo")


@dataclass
class Substep:
    name: str
    train: list[str]
    fraction: float = 1.0  # share of max_steps


@dataclass
class Training:
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    lr_groups: dict[str, float] = field(default_factory=dict)  # encoder / projector / lora -> lr
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    activation_checkpointing: bool = False
    group_by_length: bool = True
    spec_augment: dict | None = None
    log_every: int = 1
    eval_every: int = 0
    parallel: str = "dp"  # dp: every process holds the model | fsdp2: parameters/grads/optimiser sharded
    eval_generate: bool = False  # also greedy-decode the eval rows: WER / ANLS / relaxed accuracy
    # text-only rows of a frozen backbone without autograd (molora/frozen_rows.py); always off under
    # fsdp2, whose collectives need the same forwards on every process
    split_frozen_rows: bool = True


@dataclass
class Recipe:
    name: str
    stage: str
    model: dict[str, Any]
    data: dict[str, Any]
    training: Training
    substeps: list[Substep]
    max_steps: int = 100
    save_every: int = 0
    keep_last: int = 2
    seed: int = 0
    strict: bool = False
    dpo: dict[str, Any] = field(default_factory=lambda: {"beta": 0.1})
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def substep_at(self, step: int) -> tuple[int, Substep, int, int]:
        """(index, substep, first step, number of steps) of the sub-step that contains ``step``."""
        bounds = self.substep_bounds()
        for i, (start, n) in enumerate(bounds):
            if step < start + n:
                return i, self.substeps[i], start, n
        return len(bounds) - 1, self.substeps[-1], bounds[-1][0], bounds[-1][1]

    def substep_bounds(self) -> list[tuple[int, int]]:
        total = sum(s.fraction for s in self.substeps)
        bounds, start = [], 0
        for i, s in enumerate(self.substeps):
            n = self.max_steps - start if i == len(self.substeps) - 1 else round(self.max_steps * s.fraction / total)
            bounds.append((start, n))
            start += n
        return bounds


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        if not isinstance(cur.get(k), dict):
            cur[k] = {}
        cur = cur[k]
    cur[keys[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("an override must look like key=value", item)
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v.strip() else None
    return out


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError("no such recipe file", str(p))
        return p
    q = RECIPES_DIR / f"{name_or_path}.yaml"
    if not q.exists():
        names = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown recipe; packaged recipes: {names}", name_or_path)
    return q


def load_recipe(name_or_path: str, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    path = resolve(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML ({e})", str(path)) from None
    raw = copy.deepcopy(raw)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for k, v in (overrides or {}).items():
        _set(raw, k, v)
    return build_recipe(raw, source=str(path))


def build_recipe(raw: dict, source: str = "") -> Recipe:
    try:
        stage = raw.get("stage")
        if stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}", source or "recipe")
        from . import stage_registry

        defaults = stage_registry.get(stage)
        subs = raw.get("substeps") or defaults.default_substeps()
        substeps = [Substep(**s) if isinstance(s, dict) else s for s in subs]
        training = Training(**(raw.get("training") or {}))
        known = {"name", "stage", "model", "data", "training", "substeps", "max_steps", "save_every", "keep_last",
                 "seed", "strict", "dpo"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown recipe key(s) {unknown}", source or "recipe")
        r = Recipe(name=raw.get("name") or Path(source).stem, stage=stage, model=raw.get("model") or {"preset": "tiny"},
                   data=raw.get("data") or {}, training=training, substeps=substeps,
                   max_steps=int(raw.get("max_steps", 100)), save_every=int(raw.get("save_every") or 0),
                   keep_last=int(raw.get("keep_last", 2)), seed=int(raw.get("seed", 0)),
                   strict=bool(raw.get("strict", False)), dpo=raw.get("dpo") or {"beta": 0.1}, source=source)
    except TypeError as e:
        raise ConfigError(f"bad recipe field ({e})", source or "recipe") from None
    if r.max_steps < 1:
        raise ConfigError("max_steps must be >= 1", source)
    if r.training.parallel not in ("dp", "fsdp2"):
        raise ConfigError("training.parallel must be dp or fsdp2", source)
    if r.training.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError("training.schedule must be cosine, linear or constant", source)
    return r
