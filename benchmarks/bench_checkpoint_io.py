"""Peak memory and wall time of `molora convert` (every pair of layouts), `save_pretrained` and
`from_pretrained` on a random checkpoint, each in its own process (VmHWM), against the process's own
peak (imports and the same call on the tiny preset first).

    .venv/bin/python benchmarks/bench_checkpoint_io.py [--vocab 200064] [--shard 205MB] [--workdir DIR]

The checkpoint: the `small` preset (float32), with ``--vocab`` (the real 200,064 makes it ~1 GB), saved in
each layout in shards of ``--shard``. Runs on any molora checkout (`cd /work/main && .venv/bin/python
<this file>` measures that tree's code): it only calls the public API and the CLI.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LAYOUTS = ("molora", "phi4mm", "phi4_multimodal")


def weight_files(folder: Path) -> list[Path]:
    """The files holding a checkpoint's weights: those its index names, else ``model.safetensors`` (written
    out here rather than imported, so the benchmark runs on checkouts that predate molora.weight_files)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    return [folder / "model.safetensors"]

CHILD = r"""
import json, sys, time
from pathlib import Path

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

import torch
from molora import MoLoRAModel
from molora.cli import main as cli

step, src, dst, shard, warm = sys.argv[1:6]
if step == "convert":
    layout = sys.argv[6]
    assert cli(["convert", warm, dst + "-warm", "--layout", layout, "--no-processor"]) == 0
    base = hwm()
    t0 = time.perf_counter()
    assert cli(["convert", src, dst, "--layout", layout, "--max-shard-size", shard, "--no-processor"]) == 0
elif step == "load":
    dtype = sys.argv[6]
    MoLoRAModel.from_pretrained(warm, dtype=dtype)
    base = hwm()
    t0 = time.perf_counter()
    model = MoLoRAModel.from_pretrained(src, dtype=dtype)
else:  # save a loaded model
    MoLoRAModel.from_pretrained(warm).save_pretrained(dst + "-warm")
    model = MoLoRAModel.from_pretrained(src)
    for p in model.parameters():  # touch every weight: the model in memory, as after use
        p.sum()
    base = hwm()
    t0 = time.perf_counter()
    model.save_pretrained(dst, max_shard_size=shard)
print(json.dumps({"base_mib": round(base / 2**20), "peak_mib": round(hwm() / 2**20),
                  "seconds": round(time.perf_counter() - t0, 2)}))
"""


def child(*args) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=200064)
    ap.add_argument("--shard", default="205MB")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    from molora import MoLoRAConfig, MoLoRAModel

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ckpt-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        torch.manual_seed(0)
        model = MoLoRAModel(MoLoRAConfig.preset("small").replace(backbone={"vocab_size": args.vocab}))
        for layout in LAYOUTS:
            model.save_pretrained(work / layout, layout=layout, max_shard_size=args.shard)
        MoLoRAModel.from_pretrained("tiny").save_pretrained(work / "warm")
        size = sum(p.stat().st_size for p in weight_files(work / "molora"))
        del model
        rows = {}
        for a in LAYOUTS:
            for b in LAYOUTS:
                rows[f"convert {a} -> {b}"] = child("convert", work / a, work / f"out-{a}-{b}", args.shard,
                                                    work / "warm", b)
                shutil.rmtree(work / f"out-{a}-{b}")
        rows["from_pretrained (stored dtype)"] = child("load", work / "molora", "-", args.shard, work / "warm", "auto")
        rows["from_pretrained dtype=bfloat16"] = child("load", work / "molora", "-", args.shard, work / "warm",
                                                       "bfloat16")
        rows["save_pretrained"] = child("save", work / "molora", work / "saved", args.shard, work / "warm")
        print(f"checkpoint {size / 2**20:.0f} MiB float32, shards of {args.shard}")
        print("| step | peak RSS MiB | above the process's own | s |\n|---|---|---|---|")
        for k, r in rows.items():
            print(f"| {k} | {r['peak_mib']} | {r['peak_mib'] - r['base_mib']} | {r['seconds']} |")
        if args.json:
            Path(args.json).write_text(json.dumps({"checkpoint_mib": size / 2**20, "rows": rows}, indent=1))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
