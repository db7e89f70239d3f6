"""`molora convert`: rewrite a checkpoint in another layout and / or dtype.

    molora convert SRC DST [--layout molora|phi4mm|phi4_multimodal] [--dtype auto|float32|bfloat16|float16]
                   [--base OFFICIAL_DIR]

SRC is anything ``MoLoRAModel.from_pretrained`` reads: a directory in any of the three layouts, a
hub id, or a preset name (``tiny`` writes the shipped tiny weights). DST gets the model in the
chosen layout (written to a temporary folder, then renamed; sharded above ``--max-shard-size``),
the PEFT adapter folders (``vision-lora/``, ``speech-lora/``) and the processor files (the summary
names each file written). ``--dtype auto`` keeps the dtype SRC's weights are stored in.

Nothing is written until SRC (weights and processor) has been read, and DST changes only when the
whole output is in place. ``--force`` replaces a DST that holds checkpoint files only: a DST with
anything else in it (a notes file, another folder), or DST being SRC, inside it or above it, is
refused. A source whose processor cannot be read is an error (``--no-processor`` writes the model
only); a source with no tokenizer converts with a warning on stderr.
``--layout phi4mm`` writes a drop-in for the official Phi-4-multimodal-instruct folder: every
non-weight file of the official folder (remote code, tokenizer, generation and processor configs)
is copied unchanged from SRC when SRC is one, else from ``--base DIR``; without either, a warning
names what DST lacks (see molora/official_folder.py).
A checkpoint folder is read and written shard by shard (peak memory: about the largest shard,
whatever the checkpoint's size), with a progress bar.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .checkpoint import LAYOUTS
from .errors import CheckpointError
from .stored_tensors import total_bytes

__all__ = ["LAYOUTS", "DTYPES", "convert", "add_parser"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_entry(entry: Path, carried: frozenset = frozenset()) -> bool:
    """An entry `convert` writes (and so may replace): the model's files (`checkpoint.model_entry`),
    the processor / tokenizer files, a staging folder of molora's, or (``carried``) a name the export
    copies from its base folder."""
    from .checkpoint import model_entry
    from .processor_files import PROCESSOR_FILES
    from .staging import is_leftover

    return (model_entry(entry) or (entry.is_file() and entry.name in PROCESSOR_FILES) or is_leftover(entry)
            or entry.name in carried)


def _check_apart(source: Path, dst: Path) -> None:
    """The destination is neither the source folder, nor inside it, nor above it."""
    s, d = source.resolve(), dst.resolve()
    if d == s:
        raise CheckpointError("the destination is the source checkpoint itself; write to another folder", str(dst))
    if s in d.parents:
        raise CheckpointError(f"the destination is inside the source checkpoint {source}; write to a folder "
                              "outside it", str(dst))
    if d in s.parents:
        raise CheckpointError(f"the destination holds the source checkpoint {source}; write to a folder outside "
                              "it", str(dst))


def _check_destination(dst: Path, force: bool, carried: frozenset = frozenset()) -> None:
    """An absent or empty folder; with ``force``, one that holds checkpoint files only."""
    if not dst.is_dir() or not any(dst.iterdir()):
        return
    if not force:
        raise CheckpointError("the destination exists and is not empty; pass --force to replace the checkpoint "
                              "in it", str(dst))
    foreign = sorted(e.name + ("/" if e.is_dir() else "") for e in dst.iterdir() if not checkpoint_entry(e, carried))
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise CheckpointError(f"it holds {', '.join(foreign[:3])}{more}, which molora did not write (--force "
                              "replaces checkpoint files only): move them away or choose another folder", str(dst))


def _read_processor(src: str):
    """The source's processor, read before anything is written: a source whose tokenizer cannot be
    read is an error (a converted folder without it could not be served), not a note."""
    from .errors import MoLoRAError
    from .processor import MoLoRAProcessor

    hint = "; pass --no-processor to write the model only"
    try:
        return MoLoRAProcessor.from_pretrained(src)
    except MoLoRAError as e:
        raise CheckpointError(f"cannot read the processor / tokenizer: {e.reason}{hint}", e.item or src) from None
    except OSError:
        raise
    except Exception as e:  # transformers' tokenizer loaders raise many types, most without the file name
        from .processor_files import PROCESSOR_FILES

        folder = Path(src)
        files = sorted(p.name for p in folder.iterdir() if p.name in PROCESSOR_FILES) if folder.is_dir() else []
        raise CheckpointError(f"cannot read the processor / tokenizer{' (' + ', '.join(files) + ')' if files else ''}: "
                              f"{type(e).__name__}: {e}{hint}", src) from None


def convert(src: str, dst: str | Path, layout: str = "molora", dtype: str = "auto", *, force: bool = False,
            processor: bool = True, max_shard_size: int | str = "5GB", progress: bool | None = None,
            base=None) -> dict:
    """Rewrite ``src`` (any layout, hub id or preset) to ``dst`` in ``layout``; returns a summary
    (``warnings``: what the output lacks, e.g. a tokenizer the source did not have).

    Nothing is written unless everything was read; the output is staged, then moved into place, so a
    failure (a full disk: ``OSError(ENOSPC)``) leaves ``dst`` as it was. ``force`` replaces a ``dst``
    that holds checkpoint files only; a ``dst`` holding anything else, or that is the source, inside
    it or above it, is refused. A checkpoint folder is streamed: each destination shard is filled from
    the source files (cast tensor by tensor), written and let go, so memory holds about one shard
    whatever the checkpoint's size. ``progress``: a bytes progress bar (None: on a terminal, for
    checkpoints of 1 GiB or more).

    ``layout="phi4mm"``: ``base`` is the official folder whose non-weight files (remote code, tokenizer,
    generation and processor configs, documents) are copied unchanged; a source in the official layout
    is its own base. Without one the summary's warnings name what the output lacks."""
    from . import official_folder
    from .checkpoint import (check_layout_holds, detect_layout, is_preset, resolve_path, stored_dtype, stored_model,
                             write_checkpoint_files)
    from .model import MoLoRAModel
    from .staging import check_folder_path, staged

    t0 = time.perf_counter()
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}", str(dst))
    if dtype != "auto" and dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose auto or one of {', '.join(DTYPES)}", str(dst))
    dst = Path(dst).expanduser()
    check_folder_path(dst)
    if is_preset(src):
        source_layout, source_dtype = f"preset:{src}", torch.float32
    else:
        directory = resolve_path(src)
        _check_apart(directory, dst)
        source_layout, source_dtype = detect_layout(directory), stored_dtype(directory) or torch.float32
    if base is not None and layout != "phi4mm":
        raise CheckpointError("--base is for --layout phi4mm only (the official folder's files to copy)", str(base))
    if base is not None:
        base = official_folder.check_base(base, dst)
    elif layout == "phi4mm" and not is_preset(src) and source_layout == "phi4mm":
        base = official_folder.official_base(directory)  # an official source carries its own files over
    carried = frozenset(e.name for e in official_folder.carried_entries(base)) if base is not None else frozenset()
    _check_destination(dst, force, carried)
    target = source_dtype if dtype == "auto" else DTYPES[dtype]
    if is_preset(src):  # a preset is built in memory
        model = MoLoRAModel.from_pretrained(str(src), dtype=target)
        config, tensors = model.config, model.state_dict()
    else:  # read from the source files shard by shard as the destination's shards are written
        config, tensors = stored_model(directory)
        tensors = {k: v.cast(target) for k, v in tensors.items()}
    check_layout_holds(config, layout)
    proc = _read_processor(str(src)) if processor else None
    with staged(dst, owned=lambda entry: checkpoint_entry(entry, carried)) as tmp:
        processor_files = proc.save_pretrained(tmp) if proc is not None else []
        if layout == "phi4mm" and proc is not None and base is None:
            processor_files = sorted({*processor_files,
                                      *official_folder.write_json(tmp, official_folder.processor_files(config))})
        # after the processor's files: what the base carries over replaces them unchanged
        model_files = write_checkpoint_files(tensors, config, target, tmp, layout, True, max_shard_size, progress,
                                             name=dst.name, base=base,
                                             tokenizer=proc.tokenizer if proc is not None else None)
        lacks = official_folder.missing_warning(tmp, dst) if layout == "phi4mm" else None
    tokenizer = any(f.startswith("tokenizer") for f in processor_files)
    warnings, note = [lacks] if lacks else [], "not asked for (--no-processor)"
    if proc is not None:
        note = "wrote " + ", ".join(processor_files)
        if not tokenizer:
            note += " (no tokenizer in the source: media settings only)"
            warnings.append(f"{src} has no tokenizer files, so {dst} has none either (media settings only): copy "
                            "the tokenizer's files (tokenizer.json, tokenizer_config.json, ...) into it before "
                            "serving it")
    params = list(tensors.values())
    return {"source": str(src), "source_layout": source_layout, "destination": str(dst), "layout": layout,
            "dtype": str(target).removeprefix("torch."), "tensors": len(params),
            "parameters": sum(p.numel() for p in params), "bytes": total_bytes(params),
            "adapters": sorted(config.adapters), "model_files": model_files,
            "processor": tokenizer, "processor_files": processor_files, "processor_note": note,
            "base": None if base is None else str(base), "carried": sorted(carried),
            "warnings": warnings, "seconds": round(time.perf_counter() - t0, 3)}


def _run(args) -> int:
    summary_path = Path(args.summary_json) if args.summary_json else None
    if summary_path is not None:  # checked before converting: a bad path must not fail after DST is written
        from .staging import check_folder_path

        if summary_path.is_dir():
            raise CheckpointError("is a folder; --summary-json takes the path of a file to write", str(summary_path))
        check_folder_path(summary_path.parent)
    summary = convert(args.src, args.dst, layout=args.layout, dtype=args.dtype, force=args.force,
                      processor=not args.no_processor, max_shard_size=args.max_shard_size, base=args.base)
    shards = [f for f in summary["model_files"] if f.endswith(".safetensors") and "/" not in f]
    print(f"molora convert: {summary['source']} ({summary['source_layout']}) -> {summary['destination']} "
          f"({summary['layout']}, {summary['dtype']}): {summary['tensors']} tensors, "
          f"{summary['parameters'] / 1e6:.2f} M parameters, {summary['bytes'] / 2**20:.1f} MiB in "
          f"{len(shards)} file(s); adapters {', '.join(summary['adapters']) or 'none'} (PEFT folders "
          f"{', '.join(sorted({f.split('/')[0] for f in summary['model_files'] if '/' in f})) or 'none'}); "
          f"processor: {summary['processor_note']}; "
          + (f"copied from {summary['base']}: {', '.join(summary['carried'])}; " if summary["base"] else "")
          + f"{summary['seconds']:.1f} s")
    for warning in summary["warnings"]:
        print(f"molora convert: warning: {warning}", file=sys.stderr)
    if summary_path is not None:
        from .eval.report import write_json

        write_json(summary_path, summary)  # creates its folder, like DST
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="rewrite a checkpoint in another layout (molora, phi4mm, phi4_multimodal) "
                                       "and / or dtype",
                       description="molora convert SRC DST [--layout L] [--dtype D]: SRC in any layout (or a hub "
                                   "id, or a preset name); DST gets the model, its PEFT adapter folders and the "
                                   "processor files.")
    p.add_argument("src", help="checkpoint directory (any layout), hub id, or preset name (tiny)")
    p.add_argument("dst", help="output directory (absent or empty, unless --force); neither the source folder "
                               "nor inside or above it")
    p.add_argument("--layout", choices=LAYOUTS, default="molora",
                   help="molora (default), phi4mm (the official Phi-4-multimodal-instruct layout), or "
                        "phi4_multimodal (transformers-native + vision-lora/ speech-lora/ PEFT folders)")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                   help="weights dtype (auto: as stored in SRC)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="largest weights file; bigger models are sharded with an index, as transformers does "
                        "(default 5GB)")
    p.add_argument("--force", action="store_true",
                   help="replace the checkpoint in a non-empty DST: allowed only when DST holds nothing but "
                        "checkpoint files (config.json, model*.safetensors and its index, <adapter>-lora/ PEFT "
                        "folders, processor and tokenizer files); any other file (notes, other folders) makes it "
                        "refuse, so nothing molora did not write is ever deleted")
    p.add_argument("--no-processor", action="store_true", help="write the model only")
    p.add_argument("--base", metavar="DIR",
                   help="phi4mm only: the official Phi-4-multimodal-instruct folder whose non-weight files (remote "
                        "code, tokenizer, generation and processor configs) are copied into DST unchanged, so DST "
                        "is a drop-in for it (vLLM --trust-remote-code); a SRC in the official layout is its own base")
    p.add_argument("--summary-json", metavar="PATH", help="also write the summary as JSON here")
    p.set_defaults(func=_run)
