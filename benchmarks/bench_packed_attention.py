"""Packed attention kernels on this machine: the ``rows`` loop of SDPA calls vs FlexAttention with
the rows' document mask (``flex``: compiled; ``flex_eager``: uncompiled), and ``block`` (one SDPA,
dense block-diagonal mask), forward only (torch has no FlexAttention backward on the CPU).

    .venv/bin/python benchmarks/bench_packed_attention.py [--device cpu|cuda] [--repeats 5] [--out results.json]

Shapes: the tiny preset's attention (4 query heads, 2 key/value heads, head dim 32), float32;
``quickstart``: a batch of 16 rows as the quickstart's stages pack them (text ~78, speech ~89,
image 213-228 tokens); ``long``: 8 rows of 512-2048 tokens. Each figure is the median time of one
call over ``--repeats`` rounds after a warm-up (which compiles ``flex``), the kernels taking turns in
each round; ``mask_s`` is the time to build the
block mask, paid once per forward for all layers. FlexAttention is there for CUDA (what ``auto``
picks there); on the CPU it is measured honestly, not chosen.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from molora.attention import document_block_mask, packed_attention

SHAPES = {"quickstart": [78, 89, 213, 228] * 4, "long": [512, 2048, 768, 1024, 1536, 640, 2048, 900]}
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 32


def bench(lengths: list[int], device: torch.device, repeats: int, backends) -> dict:
    """Median seconds of one call of each kernel (and of building the block mask); the kernels take
    turns, one call each per round, so a load on the machine falls on all of them alike."""
    g = torch.Generator().manual_seed(0)
    n = sum(lengths)
    q = torch.randn(1, HEADS, n, HEAD_DIM, generator=g).to(device)
    k, v = (torch.randn(1, KV_HEADS, n, HEAD_DIM, generator=g).to(device) for _ in range(2))
    cu = torch.tensor([0, *lengths], device=device).cumsum(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    mask = document_block_mask(cu, n)
    calls = {"mask": lambda: document_block_mask(cu, n)}
    calls.update({b: (lambda b=b: packed_attention(q, k, v, cu, lengths, b, block_mask=mask)) for b in backends})
    want = packed_attention(q, k, v, cu, lengths, "rows")
    out = {"rows": len(lengths), "tokens": n}
    with torch.no_grad():
        for name, fn in calls.items():  # warm-up (compiles the flex kernel)
            got = fn()
            if name != "mask":
                out[f"{name}_max_abs_diff_vs_rows"] = float((got - want).abs().max())
        times = {name: [] for name in calls}
        for _ in range(repeats):
            for name, fn in calls.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
    out.update({f"{name}_s": float(np.median(t)) for name, t in times.items()})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--backends", default="rows,block,flex", help="flex_eager too: ~1 s / ~20 s a call on 2 cores")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": "float32",
              "heads": [HEADS, KV_HEADS, HEAD_DIM]}
    for name in args.shapes.split(","):
        result[name] = bench(SHAPES[name], device, args.repeats, args.backends.split(","))
        print(name, json.dumps(result[name]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
