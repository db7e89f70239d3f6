"""Saving and reloading a model whose frozen base is quantised (``molora/quantization.py``).

The quantised base is never written: a folder saved from such a model holds everything else (the
adapters and every trained part, in molora's layout, with PEFT folders and config.json as usual)
and ``quantized_base.json``, a record of the original weights (a folder or a preset name) and of the
quantisation. ``from_pretrained`` of that folder loads the original base, lays the saved tensors over
it and quantises it again: the same codes, since quantisation is deterministic. The original folder
is never written over.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import CheckpointError
from .weight_files import QUANTIZED_BASE_RECORD as RECORD


def quantized_record(directory: Path) -> dict | None:
    f = Path(directory) / RECORD
    if not f.is_file():
        return None
    record = json.loads(f.read_text())
    if not isinstance(record, dict) or "base" not in record or "quantization" not in record:
        raise CheckpointError("not a quantised-base record (needs 'base' and 'quantization')", str(f))
    return record


def _same_folder(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def save_quantized(model, directory, layout: str, peft_folders: bool, max_shard_size, progress,
                   without_base: bool) -> list[str]:
    """``save_model`` of a model with a quantised base: refused unless ``without_base=True``."""
    from .checkpoint import model_entry, write_checkpoint_files
    from .quantization import quantized_linears
    from .staging import staged

    spec, source = model.quantization, getattr(model, "quantized_from", None)
    if not without_base:
        raise CheckpointError(
            f"the model's base is quantised ({spec.scheme}) and molora never writes a quantised base; "
            f"save_pretrained(..., without_base=True) writes the adapters and trained parts with a record "
            f"of the original base ({source or 'unknown: quantised in memory'}), which from_pretrained "
            f"quantises again", str(directory))
    if layout != "molora":
        raise CheckpointError(f"a quantised-base model saves in molora's layout only (not {layout!r})",
                              str(directory))
    if source is None:
        raise CheckpointError("the quantised base has no recorded origin (it was quantised in memory, not by "
                              "from_pretrained(..., quantization_config=...)); set model.quantized_from to the "
                              "folder or preset of its original weights", str(directory))
    if _same_folder(directory, source):
        raise CheckpointError("this is the folder of the original base weights; save the adapters elsewhere",
                              str(directory))
    skip = tuple(name + "." for name in quantized_linears(model))
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    record = {"base": str(source), "quantization": spec.to_dict(),
              "note": "the base weights are not in this folder: they are read from 'base' and quantised again"}
    with staged(Path(directory), owned=model_entry) as tmp:  # model_entry owns RECORD too
        written = write_checkpoint_files(sd, model.config, model.dtype, tmp, layout, peft_folders, max_shard_size,
                                         progress, name=Path(directory).name)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return written + [RECORD]


def load_quantized(directory: Path, record: dict, quantization_config=None, **load_kwargs):
    """The model of a quantised-base folder: the original base (``record['base']``), the folder's tensors
    over it, quantised as recorded (or as ``quantization_config`` says)."""
    from .checkpoint import load_model
    from .stored_tensors import read, stored_tensors

    spec = quantization_config if quantization_config is not None else record["quantization"]
    model = load_model(record["base"], quantization_config=spec, **load_kwargs)  # the saved tensors: none quantised
    own = model.state_dict()
    saved = stored_tensors(directory)
    bad = [k for k, v in saved.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{len(bad)} saved tensor(s) do not fit the base {record['base']!r} "
                              f"(e.g. {bad[:3]})", str(directory))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in read(saved).items()}, strict=False)
    return model.eval()

