"""FSDP2 checkpoints: size on disk and each process's peak memory during one save, for the checkpoint
main wrote (the whole model and the optimiser state gathered in full on rank 0, the trained names kept,
rank 0 writing ``trainable.safetensors`` + ``optimizer.pt``) and the one written now (each process writes
its shards of the trained tensors and of their optimiser state through torch.distributed.checkpoint;
nothing is gathered). Then, computed from the published shapes (each full-size preset built on the
``meta`` device), the bytes a save moves through rank 0 on 8 GPUs before, and each rank's shard after.

    .venv/bin/python benchmarks/bench_fsdp2_checkpoint.py [--preset small] [--processes 2] [--json FILE]

The measured model: ``--preset`` with random weights, trained as the SFT stage trains it (LoRAs and
projectors), after one AdamW step (so the optimiser holds its moments), on CPU with gloo, one thread
per process. Peak memory: VmHWM reset just before the save (``/proc/self/clear_refs``), minus the
resident size then: what the save itself adds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_SIZE = ("phi4-multimodal", "phi4-mini-reasoning-multimodal", "phi4-14b-multimodal")
PLANS = ("phi4mm-sft", "phi4mm-vision", "phi4mm-speech")  # LoRAs + projectors; + vision encoder; + audio encoder
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, each the parameter's size (float32)


def trained_names(model, recipe_name: str) -> list[str]:
    """The parameters a recipe's sub-steps train (what its checkpoints hold)."""
    from molora.stages.freeze import apply_plan
    from molora.stages.recipe import load_recipe

    recipe = load_recipe(recipe_name, {})
    apply_plan(model, sorted({c for s in recipe.substeps for c in s.train}))
    return [n for n, p in model.named_parameters() if p.requires_grad]


# -- one process of the measured save ---------------------------------------------------------------
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def gathered_save(folder: Path, model, optimizer, names: list[str], rank: int) -> None:
    """What main's checkpoint did under FSDP2 (stages/trainer.py ``checkpoint`` -> sharding.full_model_state,
    full_optimizer_state; checkpointing.save_checkpoint's rank-0 files)."""
    import torch
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    weights = {n: full[n] for n in names if n in full}
    opt_state = get_optimizer_state_dict(model, optimizer, options=options)
    if rank == 0:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(folder / "trainable.safetensors"))
        torch.save(opt_state, folder / "optimizer.pt")


def worker(preset: str, how: str, folder: Path) -> None:
    import torch

    from molora import MoLoRAConfig, MoLoRAModel
    from molora.stages.distributed import Distributed
    from molora.stages.optim import build_optimizer
    from molora.stages.recipe import load_recipe
    from molora.stages.sharding import save_sharded, shard_model

    dist = Distributed(cpu=True)
    torch.manual_seed(0)
    model = MoLoRAModel(MoLoRAConfig.preset(preset))
    names = trained_names(model, "tiny-sft")
    shard_model(model, dist)
    optimizer = build_optimizer(model, load_recipe("tiny-sft", {}).training)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    if how == "gathered":
        gathered_save(folder, model, optimizer, names, dist.rank)
    else:
        save_sharded(folder / "sharded", model, optimizer, names)
    dist.barrier()
    seconds = time.perf_counter() - t0
    peaks = [None] * dist.world
    torch.distributed.all_gather_object(peaks, _status("VmHWM") - before)
    if dist.is_main:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print("RESULT " + json.dumps({"how": how, "bytes_on_disk": size, "peak_added_bytes": peaks,
                                      "seconds": round(seconds, 2)}))


# -- the parent: both saves, then the computed full-size figures -----------------------------------
def measure(preset: str, processes: int) -> list[dict]:
    out = []
    for how in ("gathered", "sharded"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", __file__,
                   "--worker", how, "--preset", preset, "--folder", str(Path(tmp) / "ckpt")]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
            out.append(json.loads(line[len("RESULT "):]))
    return out


def full_size(gpus: int = 8) -> list[dict]:
    """Per full-size preset and plan: what a save gathers through rank 0 before (every parameter, float32,
    plus the trained ones' AdamW moments) and what each rank writes after (its 1/gpus of the trained
    parameters and their moments); final/: every parameter gathered before, the trained ones after."""
    import torch

    from molora import MoLoRAConfig, MoLoRAModel

    rows = []
    for preset in FULL_SIZE:
        with torch.device("meta"):
            model = MoLoRAModel(MoLoRAConfig.preset(preset))
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        for plan in PLANS:
            named = dict(model.named_parameters())
            trained = sum(named[n].numel() * named[n].element_size() for n in trained_names(model, plan))
            state = trained * (1 + ADAM_MOMENTS)
            rows.append({"preset": preset, "plan": plan, "all_parameters_bytes": total, "trained_bytes": trained,
                         "checkpoint_through_rank0_before": total + trained * ADAM_MOMENTS,
                         "checkpoint_per_rank_after": state // gpus, "checkpoint_on_disk": state,
                         "final_gathered_before": total, "final_gathered_after": trained})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", choices=("gathered", "sharded"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.preset, args.worker, Path(args.folder))
    gb = lambda b: f"{b / 1e9:.3f} GB"  # noqa: E731
    measured = measure(args.preset, args.processes)
    print(f"{args.preset}, {args.processes} processes on CPU (gloo), one save:")
    for r in measured:
        peaks = ", ".join(gb(b) for b in r["peak_added_bytes"])
        print(f"  {r['how']:9s} on disk {gb(r['bytes_on_disk'])}   peak added per rank [{peaks}]   {r['seconds']} s")
    computed = full_size()
    print("full-size presets on 8 GPUs (computed, float32 parameters, AdamW):")
    for r in computed:
        print(f"  {r['preset']:32s} {r['plan']:14s} checkpoint through rank 0 {gb(r['checkpoint_through_rank0_before'])}"
              f" -> per rank {gb(r['checkpoint_per_rank_after'])} (on disk {gb(r['checkpoint_on_disk'])});"
              f" final/ gathers {gb(r['final_gathered_before'])} -> {gb(r['final_gathered_after'])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": measured, "computed": computed}, indent=1))


if __name__ == "__main__":
    main()
