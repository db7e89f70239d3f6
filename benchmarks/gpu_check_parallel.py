"""One training path of ``make gpu-check`` (benchmarks/gpu_check.py), run by it under
``torchrun --nproc-per-node=1``: the real trainer (``molora.stages.trainer.train``) on the speech
post-training plan, as FSDP2 (``--path fsdp2``) or replicated with torch DDP (``--path ddp``), in a
process group of one (gloo on CPU, nccl on CUDA). Writes ``--out`` (JSON): per-step losses and
times (from the trainer's metrics: a step's time is its global batch over its samples/s), peak
memory, the checkpoint's bytes on disk, the parameter counts and the path the run took.

Peak memory is read as the trainer's ``finish`` begins (every step and the checkpoint done; not yet
``final/``, which for FSDP2 rebuilds the starting model on rank 0 beside the trained one) and again
at the end. On CUDA: ``torch.cuda.max_memory_allocated``; on CPU: the process's ``VmHWM`` (its peak
resident set), with ``VmRSS`` before the model loads (the interpreter and libraries) beside it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _proc_status(field: str) -> int:
    """``field`` of /proc/self/status in bytes (VmHWM: the peak resident set; VmRSS: now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _memory(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _proc_status("VmHWM")


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", choices=("fsdp2", "ddp"), required=True)
    ap.add_argument("--model", required=True, help="the starting model folder")
    ap.add_argument("--data", required=True, help="the training manifest")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--save-every", type=int, default=2, help="one checkpoint: at a step before the last")
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args(argv)

    # what either path imports on its way (FSDP2, DCP, DDP, the collator): loaded before the baseline is
    # read, so that peak minus baseline counts what training holds, not code
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    import torch.nn.parallel  # noqa: F401

    from molora.stages import collate, evaluation, feed, sampler, trainer  # noqa: F401
    from molora.stages.recipe import build_recipe

    plan = ["speech_projector", "speech_lora"]  # the report's speech post-training plan
    raw = {"name": f"gpu-check-{args.path}", "stage": "speech", "model": {"path": args.model},
           "data": {"train": args.data}, "max_steps": args.steps, "seed": 0,
           "save_every": args.save_every, "keep_last": 1,
           "substeps": [{"name": "post_training", "train": plan, "fraction": 1.0}],
           "training": {"micro_batch_size": args.batch, "lr": 1e-4, "warmup_steps": 0, "schedule": "constant",
                        "max_grad_norm": 1.0, "precision": "bf16", "log_every": 1,
                        # the same execution plan on both paths (a sharded run never splits frozen rows)
                        "split_frozen_rows": False,
                        "parallel": "fsdp2" if args.path == "fsdp2" else "dp", "grad_sync": "ddp"}}
    recipe = build_recipe(raw, source="gpu-check")
    seen = {}
    finish, build_model = trainer.finish, trainer.build_model

    def measure_and_build(*a, **kw):  # the resident set before the model loads (everything imported by then)
        seen.setdefault("baseline", _proc_status("VmRSS"))
        return build_model(*a, **kw)

    def finish_and_measure(run):  # the peak through the steps and the checkpoint, before final/
        seen["peak"] = _memory(run.dist.device)
        seen["device"] = run.dist.device
        seen["trainable_dtype"] = str(run.trainable[0].dtype).replace("torch.", "")
        params = list(run.model.parameters())  # sharded: DTensors, whose numel is the whole tensor's
        seen["trainable"] = sum(p.numel() for p in params if p.requires_grad)
        seen["total"] = sum(p.numel() for p in params)
        return finish(run)

    trainer.finish, trainer.build_model = finish_and_measure, measure_and_build
    try:
        summary = trainer.train(recipe, args.run_dir, cpu=args.cpu, progress=False, overwrite=True)
    finally:
        trainer.finish, trainer.build_model = finish, build_model
    run_dir = Path(args.run_dir)
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if "loss" in r]
    times = [args.batch / r["samples_per_s"] for r in rows]  # the global batch of one process
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    out = {"parallel": summary["parallel"], "steps": len(rows), "losses": [r["loss"] for r in rows],
           "step_times_s": [round(t, 4) for t in times],
           "step_s": round(float(torch.tensor(times[1:] or times).median()), 4),
           "peak_memory_bytes": seen["peak"], "peak_memory_end_bytes": _memory(seen["device"]),
           "memory_measure": "cuda.max_memory_allocated" if seen["device"].type == "cuda" else "VmHWM",
           "baseline_rss_bytes": seen["baseline"] if seen["device"].type != "cuda" else 0,
           "checkpoint": ckpts[-1].name if ckpts else None,
           "checkpoint_bytes": _bytes(ckpts[-1]) if ckpts else None,
           "trainable_parameters": seen["trainable"], "total_parameters": seen["total"],
           "trainable_dtype": seen["trainable_dtype"]}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
