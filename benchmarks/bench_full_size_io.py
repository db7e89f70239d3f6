"""Peak memory and wall time of `molora convert`, `from_pretrained` and `save_pretrained` at full size:
a random Phi-4-multimodal checkpoint in the official layout (bf16, 3 shards, as the official repository;
written one shard at a time by scripts/validate_full_size.py's ``write`` step), each step in its own
process (VmHWM, against the process's own peak after imports and a tiny-preset warm-up).

    .venv/bin/python benchmarks/bench_full_size_io.py --workdir DIR [--preset phi4-multimodal] [--ckpt DIR] [--steps convert,load,save]

Only the public API and the CLI are called, so the same file measures any checkout: run it with that
checkout's interpreter (``cd OLD && .venv/bin/python /path/to/bench_full_size_io.py --ckpt DIR``) to
compare before / after on one checkpoint. Needs ~3x the checkpoint's size on disk (source, converted
copy, saved copy; each output is removed after its step).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

import torch
from molora import MoLoRAModel
from molora.cli import main as cli

step, src, dst = sys.argv[1:4]
MoLoRAModel.from_pretrained("tiny")  # imports and first-call costs out of the way
base = hwm()
t0 = time.perf_counter()
if step == "convert":
    assert cli(["convert", src, dst, "--layout", "phi4_multimodal", "--no-processor"]) == 0
elif step == "load":
    model = MoLoRAModel.from_pretrained(src)  # as stored: bf16, memory-mapped
    for p in model.parameters():  # every weight read once, as a first forward would
        p.sum()
else:  # save a loaded model (every weight touched first)
    model = MoLoRAModel.from_pretrained(src)
    for p in model.parameters():
        p.sum()
    base = hwm()
    t0 = time.perf_counter()
    model.save_pretrained(dst)
print(json.dumps({"base_gib": round(base / 2**30, 2), "peak_gib": round(hwm() / 2**30, 2),
                  "seconds": round(time.perf_counter() - t0, 1)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--preset", default="phi4-multimodal")
    ap.add_argument("--ckpt", help="an existing official-layout checkpoint (default: write one in --workdir)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--steps", default="convert,load,save", help="which of convert, load, save to run")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.ckpt) if args.ckpt else work / "official"
    if not ckpt.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
        from validate_full_size import step_write

        print("writing", ckpt, step_write(ckpt, args.preset), flush=True)
    from bench_checkpoint_io import weight_files  # beside this file

    size = sum(f.stat().st_size for f in weight_files(ckpt)) / 2**30
    results = {"checkpoint_gib": round(size, 2)}
    for step in args.steps.split(","):
        out = work / f"out-{step}"
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run([sys.executable, "-c", CHILD, step, str(ckpt), str(out)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            results[step] = {"error": done.stderr.strip().splitlines()[-1:]}
        else:
            results[step] = json.loads(done.stdout.strip().splitlines()[-1])
        shutil.rmtree(out, ignore_errors=True)
        print(step, results[step], flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
