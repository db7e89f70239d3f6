"""`molora convert`: rewrite a checkpoint in another layout and / or dtype.

    molora convert SRC DST [--layout molora|phi4mm|phi4_multimodal] [--dtype auto|float32|bfloat16|float16]

SRC is anything ``MoLoRAModel.from_pretrained`` reads: a directory in any of the three layouts, a
hub id, or a preset name (``tiny`` writes the shipped tiny weights). DST gets the model in the
chosen layout (written to a temporary folder, then renamed; sharded above ``--max-shard-size``),
the PEFT adapter folders (``vision-lora/``, ``speech-lora/``) and the processor files (the summary
names each file written). ``--dtype auto`` keeps the dtype SRC's weights are stored in. A checkpoint
folder is read and written shard by shard (peak memory: about the largest shard, whatever the
checkpoint's size), with a progress bar.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .checkpoint import LAYOUTS
from .errors import CheckpointError
from .stored_tensors import total_bytes

__all__ = ["LAYOUTS", "DTYPES", "convert", "add_parser"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
def convert(src: str, dst: str | Path, layout: str = "molora", dtype: str = "auto", *, force: bool = False,
            processor: bool = True, max_shard_size: int | str = "5GB", progress: bool | None = None) -> dict:
    """Rewrite ``src`` (any layout, hub id or preset) to ``dst`` in ``layout``; returns a summary. A checkpoint
    folder is streamed: each destination shard is filled from the source files (cast tensor by tensor),
    written and let go, so memory holds about one shard whatever the checkpoint's size. ``progress``: a
    bytes progress bar (None: on a terminal, for checkpoints of 1 GiB or more)."""
    from .checkpoint import detect_layout, is_preset, resolve_path, stored_dtype, stored_model, write_checkpoint
    from .model import MoLoRAModel
    from .processor import MoLoRAProcessor

    t0 = time.perf_counter()
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}", str(dst))
    if dtype != "auto" and dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose auto or one of {', '.join(DTYPES)}", str(dst))
    dst = Path(dst).expanduser()
    if dst.exists() and not dst.is_dir():
        raise CheckpointError("the destination is a file, not a directory", str(dst))
    if dst.exists() and any(dst.iterdir()) and not force:
        raise CheckpointError("the destination exists and is not empty; pass --force to replace it", str(dst))
    if is_preset(src):
        source_layout, source_dtype = f"preset:{src}", torch.float32
    else:
        directory = resolve_path(src)
        if dst.exists() and dst.resolve() == directory.resolve():
            raise CheckpointError("the destination is the source checkpoint itself; write to another directory",
                                  str(dst))
        source_layout, source_dtype = detect_layout(directory), stored_dtype(directory) or torch.float32
    target = source_dtype if dtype == "auto" else DTYPES[dtype]
    if is_preset(src):  # a preset is built in memory
        model = MoLoRAModel.from_pretrained(str(src), dtype=target)
        config, tensors = model.config, model.state_dict()
    else:  # read from the source files shard by shard as the destination's shards are written
        config, tensors = stored_model(directory)
        tensors = {k: v.cast(target) for k, v in tensors.items()}
    model_files = write_checkpoint(tensors, config, target, dst, layout, max_shard_size=max_shard_size,
                                   progress=progress)
    processor_files, processor_note = [], "not asked for"
    if processor:
        try:
            processor_files = MoLoRAProcessor.from_pretrained(str(src)).save_pretrained(dst)
            processor_note = "wrote " + ", ".join(processor_files)
            if not any(f.startswith("tokenizer") for f in processor_files):
                processor_note += " (no tokenizer in the source: media settings only)"
        except Exception as e:  # e.g. an unreadable tokenizer
            processor_note = f"not written ({type(e).__name__}: {e})"
    params = list(tensors.values())
    return {"source": str(src), "source_layout": source_layout, "destination": str(dst), "layout": layout,
            "dtype": str(target).removeprefix("torch."), "tensors": len(params),
            "parameters": sum(p.numel() for p in params),
            "bytes": total_bytes(params),
            "adapters": sorted(config.adapters), "model_files": model_files,
            "processor": any(f.startswith("tokenizer") for f in processor_files),
            "processor_files": processor_files, "processor_note": processor_note,
            "seconds": round(time.perf_counter() - t0, 3)}


def _run(args) -> int:
    summary = convert(args.src, args.dst, layout=args.layout, dtype=args.dtype, force=args.force,
                      processor=not args.no_processor, max_shard_size=args.max_shard_size)
    shards = [f for f in summary["model_files"] if f.endswith(".safetensors") and "/" not in f]
    print(f"molora convert: {summary['source']} ({summary['source_layout']}) -> {summary['destination']} "
          f"({summary['layout']}, {summary['dtype']}): {summary['tensors']} tensors, "
          f"{summary['parameters'] / 1e6:.2f} M parameters, {summary['bytes'] / 2**20:.1f} MiB in "
          f"{len(shards)} file(s); adapters {', '.join(summary['adapters']) or 'none'} (PEFT folders "
          f"{', '.join(sorted({f.split('/')[0] for f in summary['model_files'] if '/' in f})) or 'none'}); "
          f"processor: {summary['processor_note']}; {summary['seconds']:.1f} s")
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=1))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="rewrite a checkpoint in another layout (molora, phi4mm, phi4_multimodal) "
                                       "and / or dtype",
                       description="molora convert SRC DST [--layout L] [--dtype D]: SRC in any layout (or a hub "
                                   "id, or a preset name); DST gets the model, its PEFT adapter folders and the "
                                   "processor files.")
    p.add_argument("src", help="checkpoint directory (any layout), hub id, or preset name (tiny)")
    p.add_argument("dst", help="output directory (must be absent or empty unless --force)")
    p.add_argument("--layout", choices=LAYOUTS, default="molora",
                   help="molora (default), phi4mm (the official Phi-4-multimodal-instruct layout), or "
                        "phi4_multimodal (transformers-native + vision-lora/ speech-lora/ PEFT folders)")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                   help="weights dtype (auto: as stored in SRC)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="largest weights file; bigger models are sharded with an index, as transformers does "
                        "(default 5GB)")
    p.add_argument("--force", action="store_true", help="replace a non-empty DST")
    p.add_argument("--no-processor", action="store_true", help="write the model only")
    p.add_argument("--summary-json", metavar="PATH", help="also write the summary as JSON here")
    p.set_defaults(func=_run)
