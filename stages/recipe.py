"""Recipes: YAML files that say what a training run does (stage, model, data, schedule, plan).

A recipe opens with the exact command that runs it. ``load_recipe(name_or_path, overrides)``
reads a packaged recipe by name (``stages/recipes/NAME.yaml``) or any YAML path, then applies
``key=value`` overrides (dotted keys reach nested sections: ``data.train=PATH``,
``training.lr=3e-4``; the common ones are top level: ``max_steps``, ``save_every``, ``seed``).
A stage with settings of its own (stages/table.py, ``Stage.settings``) reads them from the section
named after it (``dpo.beta=0.2``); this module checks that section against the stage's class.
"""
from __future__ import annotations

import copy
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from molora.errors import ConfigError

from .freeze import components
from .table import STAGES, Stage, stage as stage_entry
from .typed_fields import check_keys, coerce

RECIPES_DIR = Path(__file__).parent / "recipes"


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
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW's moment decay rates
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
    # dp with several processes: ddp (torch's DistributedDataParallel, reduction overlapped with backward) |
    # manual (the hand-written average after backward, the oracle ddp is tested against): stages/grad_sync.py
    grad_sync: str = "ddp"
    eval_generate: bool = False  # also greedy-decode the eval rows: WER / ANLS / relaxed accuracy
    # text-only rows of a frozen backbone without autograd (molora/frozen_rows.py); always off under
    # fsdp2, whose collectives need the same forwards on every process
    split_frozen_rows: bool = True
    # the collator packs each micro-batch's rows without padding (molora/packing.py; the LM stages)
    packing: bool = True
    # collate the next step's batch in a background thread while this step computes (stages/feed.py);
    # unset: on with an accelerator, off on CPU (there the thread competes with the step for the cores)
    prefetch: bool | None = None
    # collate in this many DataLoader worker processes (stages/collate_workers.py); 0: in this process
    # (with training.prefetch's thread); the batches, sampler states and skip list are the same
    collate_workers: int = 0


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
    settings: Any = None  # the stage's own settings (an instance of its Stage.settings class), or None
    source: str = ""

    def to_dict(self) -> dict:
        """The recipe as plain data; the stage's settings under the section they were read from."""
        d = asdict(self)
        settings = d.pop("settings")
        if settings is not None:
            d[self.stage] = settings
        return d

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
    for i, k in enumerate(keys[:-1]):
        if cur.get(k) is None:
            cur[k] = {}
        elif not isinstance(cur[k], dict):
            raise ConfigError(f"{'.'.join(keys[:i + 1])} is {cur[k]!r}, not a section with keys", dotted)
        cur = cur[k]
    cur[keys[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key == "<<":
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(text: str, where: str, *, lines: bool = True) -> Any:
    """YAML text -> data; a syntax error or a duplicate key names ``where:line`` (``where`` alone
    when ``lines`` is False: a command-line value)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark is not None and lines else where
        reason = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"invalid YAML ({reason})", at) from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("an override must look like key=value", item)
        k, v = item.split("=", 1)
        k = k.strip()
        if not k or any(not part for part in k.split(".")):
            raise ConfigError("an override must look like key=value (dotted keys: training.lr=3e-4)", item)
        if k in out:
            raise ConfigError("given twice on the command line", k)
        out[k] = read_yaml(v, k, lines=False) if v.strip() else None
    return out


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError("no such recipe file", str(p))
        if not p.is_file():
            raise ConfigError("not a file (a recipe is a YAML file or a packaged recipe name)", str(p))
        return p
    q = RECIPES_DIR / f"{name_or_path}.yaml"
    if not q.exists():
        names = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown recipe; packaged recipes: {names}", name_or_path)
    return q


def load_recipe(name_or_path: str, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """A recipe by name or path, with ``key=value`` overrides; every value is checked and coerced to
    its field's type here, before any model or data is loaded."""
    path = resolve(name_or_path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the recipe ({e})", str(path)) from None
    raw = read_yaml(text, str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a recipe is a YAML mapping of keys, got {type(raw).__name__}", str(path))
    raw = copy.deepcopy(raw)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for k, v in (overrides or {}).items():
        _set(raw, k, v)
    return build_recipe(raw, source=str(path))


def stage_recipe(stage: str, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """A recipe for one stage of the table with its defaults (``molora train --stage NAME``): the
    tiny preset, the stage's sub-steps; ``key=value`` overrides as for ``load_recipe``."""
    stage_entry(stage)
    raw: dict[str, Any] = {"name": stage, "stage": stage}
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for k, v in (overrides or {}).items():
        _set(raw, k, v)
    return build_recipe(raw, source=f"stage {stage}")


# The keys of the free-form sections, with their types (the dataclasses above type the others).
MODEL_FIELDS = {"preset": str, "path": str, "config": dict, "backbone": str, "vision": str, "init": str,
                "quantization": str | None}
DATA_FIELDS = {"train": str | dict | None, "eval": str | dict | None, "allow_outside_root": bool,
               "max_tokens": int | None}
TOP_FIELDS = {"name": str | None, "stage": str, "model": dict | None, "data": dict | None, "training": dict | None,
              "substeps": list | None, "max_steps": int, "save_every": int, "keep_last": int, "seed": int,
              "strict": bool}
CHOICES = {"training.schedule": ("cosine", "linear", "constant"), "training.precision": ("auto", "fp32", "bf16", "fp16"),
           "training.parallel": ("dp", "fsdp2"), "training.grad_sync": ("ddp", "manual")}
LR_GROUPS = ("encoder", "projector", "lora", "other")


def _nested_keys(st: Stage | None) -> dict[str, str]:
    """Each key of a section by its bare name (``lr`` -> ``training.lr``): what a top-level key meant."""
    sections = {"training": _dataclass_fields(Training), "data": DATA_FIELDS, "model": MODEL_FIELDS}
    if st is not None and st.settings is not None:
        sections[st.name] = _dataclass_fields(st.settings)
    return {k: f"{name}.{k}" for name, fields in sections.items() for k in fields}


def _check_top_keys(raw: dict, st: Stage | None) -> dict[str, Any]:
    """The top-level keys a recipe of stage ``st`` may have (its own settings section among them),
    or a ConfigError naming the first other one."""
    fields = dict(TOP_FIELDS)
    if st is not None and st.settings is not None:
        fields[st.name] = dict | None
    for key in raw:
        other = STAGES.get(key) if key not in fields else None
        if other is not None and other.settings is not None:
            own = (f"its section is {st.name}" if st is not None and st.settings is not None
                   else "which has no settings section")
            raise ConfigError(f"the settings of stage {key}, but this recipe's stage is {raw.get('stage')!r} ({own})",
                              key)
    check_keys(raw, fields, "", elsewhere=_nested_keys(st))
    return fields


def _stage_settings(raw: dict, st: Stage) -> Any:
    """An instance of the stage's settings class from its section (the class's defaults for what
    the section leaves out), or None for a stage without settings."""
    if st.settings is None:
        return None
    return st.settings(**_section(raw, st.name, _dataclass_fields(st.settings)))


def _datasets_spec(spec: Any, key: str) -> None:
    """A ``data.<key>`` datasets spec ({path, split, ...}): its keys are read_hf_dataset's options."""
    if not isinstance(spec, dict):
        return
    import inspect

    from molora.data.hf_datasets import read_hf_dataset

    options = {n for n, p in inspect.signature(read_hf_dataset).parameters.items() if p.kind == p.KEYWORD_ONLY}
    check_keys(spec, options | {"path"}, f"data.{key}")


def _section(raw: dict, name: str, fields: dict[str, Any]) -> dict:
    value = raw.get(name) or {}
    check_keys(value, fields, name)
    return {k: coerce(v, fields[k], f"{name}.{k}") for k, v in value.items()}


def _dataclass_fields(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_recipe(raw: dict, source: str = "") -> Recipe:
    """A Recipe from a mapping (a parsed YAML file plus overrides): unknown keys are refused with
    the known ones listed, every value is coerced to its field's type, ranges are checked."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a recipe is a mapping of keys, got {type(raw).__name__}", source or "recipe")
    named = raw.get("stage")
    fields = _check_top_keys(raw, STAGES.get(named) if isinstance(named, str) else None)
    top = {k: coerce(v, fields[k], k) for k, v in raw.items()}
    stage = top.get("stage")
    st = stage_entry(stage)  # an unknown stage is an error naming them
    default_substeps = st.default_substeps()

    training_fields = _dataclass_fields(Training)
    training = Training(**_section(raw, "training", training_fields))
    subs = top.get("substeps") or default_substeps
    substeps = []
    for i, s in enumerate(subs):
        if isinstance(s, Substep):
            substeps.append(s)
            continue
        if not isinstance(s, dict):
            raise ConfigError(f"expected a mapping {{name, train, fraction}}, got {s!r}", f"substeps[{i}]")
        fields = _dataclass_fields(Substep)
        check_keys(s, fields, f"substeps[{i}]")
        missing = [k for k in ("name", "train") if k not in s]
        if missing:
            raise ConfigError(f"missing key(s) {missing}", f"substeps[{i}]")
        substeps.append(Substep(**{k: coerce(v, fields[k], f"substeps[{i}].{k}") for k, v in s.items()}))
    model = _section(raw, "model", MODEL_FIELDS) or {"preset": "tiny"}
    data = _section(raw, "data", DATA_FIELDS)
    for key in ("train", "eval"):
        _datasets_spec(data.get(key), key)
    r = Recipe(name=top.get("name") or Path(source).stem, stage=stage, model=model, data=data, training=training,
               substeps=substeps, max_steps=top.get("max_steps", 100), save_every=top.get("save_every", 0),
               keep_last=top.get("keep_last", 2), seed=top.get("seed", 0), strict=top.get("strict", False),
               settings=_stage_settings(raw, st), source=source)
    check_ranges(r)
    return r


def check_ranges(r: Recipe) -> None:
    """Values of the right type but out of range: a ConfigError naming the key."""
    t = r.training

    def need(ok: bool, key: str, what: str, value) -> None:
        if not ok:
            raise ConfigError(f"must be {what}, got {value!r}", key)

    need(r.max_steps >= 1, "max_steps", ">= 1", r.max_steps)
    need(r.save_every >= 0, "save_every", ">= 0 (0: no checkpoints)", r.save_every)
    need(r.keep_last >= 0, "keep_last", ">= 0 (0: keep every checkpoint)", r.keep_last)
    for key, options in CHOICES.items():
        value = getattr(t, key.split(".")[1])
        need(value in options, key, "one of " + ", ".join(options), value)
    need(t.micro_batch_size >= 1, "training.micro_batch_size", ">= 1", t.micro_batch_size)
    need(t.grad_accum >= 1, "training.grad_accum", ">= 1", t.grad_accum)
    need(t.lr > 0, "training.lr", "> 0", t.lr)
    for g, v in t.lr_groups.items():
        need(g in LR_GROUPS, f"training.lr_groups.{g}", "a group among " + ", ".join(LR_GROUPS), g)
        need(v > 0, f"training.lr_groups.{g}", "> 0", v)
    need(t.weight_decay >= 0, "training.weight_decay", ">= 0", t.weight_decay)
    need(all(0 <= b < 1 for b in t.betas), "training.betas", "two numbers in [0, 1)", list(t.betas))
    need(t.warmup_steps >= 0, "training.warmup_steps", ">= 0", t.warmup_steps)
    need(0 <= t.min_lr_ratio <= 1, "training.min_lr_ratio", "in [0, 1]", t.min_lr_ratio)
    need(t.max_grad_norm >= 0, "training.max_grad_norm", ">= 0 (0: no clipping)", t.max_grad_norm)
    need(t.log_every >= 1, "training.log_every", ">= 1", t.log_every)
    need(t.eval_every >= 0, "training.eval_every", ">= 0 (0: no periodic evaluation)", t.eval_every)
    need(t.collate_workers >= 0, "training.collate_workers", ">= 0 (0: collate in the training process)",
         t.collate_workers)
    if t.spec_augment:
        from .collate import Collator

        Collator.check_spec(t.spec_augment)
    for key, what in r.settings.out_of_range() if hasattr(r.settings, "out_of_range") else ():
        need(False, f"{r.stage}.{key}", what, getattr(r.settings, key))
    max_tokens = r.data.get("max_tokens")
    need(max_tokens is None or max_tokens >= 1, "data.max_tokens", ">= 1 (or null: the model's context)", max_tokens)
    if r.model.get("quantization") is not None:  # int8 / int4 / nf4: the frozen base quantised (QLoRA)
        from molora.quantization import QuantizationSpec

        try:
            QuantizationSpec.of(r.model["quantization"])
        except ConfigError as e:
            raise ConfigError(e.reason, "model.quantization") from None
    if not r.model.get("path"):
        from molora.presets import PRESETS

        from .starting_weights import INITS

        preset = r.model.get("preset", "tiny")
        need(preset in PRESETS, "model.preset", "one of " + ", ".join(PRESETS), preset)
        init = r.model.get("init", "pretrained")
        need(init in INITS, "model.init", "one of " + ", ".join(INITS), init)
    for i, s in enumerate(r.substeps):
        need(s.fraction > 0, f"substeps[{i}].fraction", "> 0", s.fraction)
        need(bool(s.train), f"substeps[{i}].train", "a non-empty list of components", s.train)
        for c in s.train:
            if c == "llm":
                raise ConfigError("the language model stays frozen in every molora stage (train its LoRAs "
                                  "instead)", f"substeps[{i}].train")
            known = components()
            need(c in known or c.endswith(("_lora", "_audio_projector")), f"substeps[{i}].train",
                 "components among " + ", ".join(sorted(set(known) - {"llm"})), c)
