"""What a training run starts from, said before the first step and recorded in ``run.json``.

A recipe's ``model`` section names one of:
- ``path``: a checkpoint folder (any layout) or a hub id;
- ``backbone`` / ``vision``: a model assembled from a Phi-4-mini checkpoint and a SigLIP tower;
- ``preset`` (default ``tiny``): the preset's shipped pretrained parts (``molora/weights/<preset>/``:
  tokenizer, backbone, vision tower, conformer) with fresh projectors and LoRAs drawn from the run's
  seed, the same model as ``MoLoRAModel.from_pretrained("tiny")`` for seed 0. A random model only when
  asked (``model.init=random``), or when the preset ships no weights (``small``, ``phi4-multimodal``:
  say ``model.path=`` for a real checkpoint).
"""
from __future__ import annotations

from pathlib import Path

from molora.errors import ConfigError

__all__ = ["INITS", "shipped_weights", "start_record", "describe_start", "load_shipped"]

INITS = ("pretrained", "random")


def shipped_weights(spec: dict) -> Path | None:
    """The shipped weights file a preset run starts from (None: a checkpoint, an assembly, or random)."""
    from molora.checkpoint import preset_weights

    if spec.get("path") or spec.get("backbone") or spec.get("vision") or spec.get("init", "pretrained") == "random":
        return None
    return preset_weights(spec.get("preset", "tiny"))


def start_record(spec: dict, seed: int) -> dict:
    """What the run starts from, as ``run.json`` records it."""
    if spec.get("path"):
        return {"from": "checkpoint", "path": str(spec["path"])}
    if spec.get("backbone") or spec.get("vision"):
        return {"from": "assembled", "backbone": spec.get("backbone"), "vision": spec.get("vision"), "seed": seed}
    preset = spec.get("preset", "tiny")
    weights = shipped_weights(spec)
    if weights is not None:
        from .run_state import file_digest

        return {"from": "pretrained", "preset": preset, "weights": str(weights), "sha256": file_digest(weights),
                "fresh": f"projectors and LoRAs (seed {seed})"}
    why = "model.init=random" if spec.get("init") == "random" else f"the {preset} preset ships no weights"
    return {"from": "random", "preset": preset, "seed": seed, "why": why}


def describe_start(record: dict) -> str:
    """The banner line: ``[molora] starting weights: ...``."""
    kind = record["from"]
    if kind == "checkpoint":
        what = f"checkpoint {record['path']}"
    elif kind == "assembled":
        what = f"assembled from backbone {record['backbone']} and vision {record['vision']} (seed {record['seed']})"
    elif kind == "pretrained":
        what = (f"preset {record['preset']}, shipped weights {record['weights']} (sha256 {record['sha256']}) + fresh "
                f"{record['fresh']}")
    else:
        hint = "" if record["why"] == "model.init=random" else "; model.path=DIR starts from a checkpoint"
        what = f"random (preset {record['preset']}, seed {record['seed']}: {record['why']}{hint})"
    return f"[molora] starting weights: {what}"


def load_shipped(model, weights: Path, preset: str) -> None:
    """The shipped parts into ``model`` (the rest keeps its fresh initialisation); a config override
    that changes a shipped tensor's shape is an error naming it."""
    from safetensors.torch import load_file

    from molora.modalities import MODALITIES

    # the parts of the preset's modalities that this model leaves out are not loaded
    absent = tuple(f"{m.module_name}." for m in MODALITIES.values() if m.name not in model.config.modalities)
    sd = {k: v for k, v in load_file(str(weights)).items() if not k.startswith(absent)}
    own = model.state_dict()
    bad = [k for k, v in sd.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        k = bad[0]
        have = tuple(own[k].shape) if k in own else "absent"
        raise ConfigError(f"the {preset} preset's shipped weights do not fit this model ({len(bad)} tensor(s), e.g. "
                          f"{k}: shipped {tuple(sd[k].shape)}, model {have}); model.config changes a pretrained part: "
                          "pass model.init=random to train a random model of that shape", "model.config")
    model.load_state_dict(sd, strict=False)
