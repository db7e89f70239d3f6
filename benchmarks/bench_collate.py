"""Collated samples/s by number of collation workers (``training.collate_workers``) at the quickstart's
shapes: the tiny preset's processor, the quickstart's speech / vision / sft training manifests (built
from ``molora.synthetic.build.build_corpora`` as ``molora/quickstart.py`` builds them), its micro-batch
sizes, length grouping, packing and SpecAugment off, as the quickstart trains.

    .venv/bin/python benchmarks/bench_collate.py                     # 0, 1 and 2 workers
    .venv/bin/python benchmarks/bench_collate.py --workers 0 2 4 --steps 40 --sizes tiny

Each case runs the trainer's ``StepFeed`` alone (no model step), so the figure is collation
throughput: with workers, the steady rate after the first step (the workers' start is printed
apart). The workers run one torch thread each (DataLoader's rule); in-process collation uses the
process's threads (``--threads``: on a loaded machine, OpenMP teams that wait for busy cores make
multi-threaded in-process collation much slower than one thread).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def quickstart_manifests(sizes: str, seed: int, root=None) -> dict[str, str]:
    from molora.quickstart import CORPORA, _mix
    from molora.synthetic.build import build_corpora

    c = build_corpora(root, seed=seed, sizes=sizes, names=CORPORA, log=print)
    base = Path(c["speech"]["train"]).parent.parent.resolve()
    tag = f"quickstart-{seed}-{sizes}"
    full = sizes != "tiny"
    return {  # as molora/quickstart.py _run builds them
        "speech": _mix(base, f"{tag}-speech", [c["speech"]["train"]]),
        "vision": _mix(base, f"{tag}-vision", [c["documents"]["train"], c["charts"]["train"]]),
        "sft": _mix(base, f"{tag}-sft", [c["speech"]["train"], c["documents"]["train"], c["charts"]["train"],
                                         c["joint"]["train"]], limit_each=600 if full else None),
    }


def measure(samples: list, processor, *, batch: int, group: bool, workers: int, steps: int, seed: int,
            step_s: float = 0.0, prefetch: bool = False) -> dict:
    from molora.stages.collate import Collator
    from molora.stages.feed import StepFeed
    from molora.stages.sampler import LengthGroupedBatches

    sampler = LengthGroupedBatches([s.length for s in samples], batch, seed, group_by_length=group)
    collator = Collator(processor, pack=True)  # the LM stages pack (training.packing)
    feed = StepFeed(samples, sampler, collator, paired=False, rank=0, world=1, grad_accum=1, seed=seed,
                    last_step=steps + 1, prefetch=prefetch, workers=workers)
    try:
        t0 = time.perf_counter()
        feed.get(0)
        t1 = time.perf_counter()
        for step in range(1, steps + 1):
            feed.get(step)
            time.sleep(step_s)  # an accelerator's step: the cores are free meanwhile
        t2 = time.perf_counter()
    finally:
        feed.close()
    return {"first_step_s": t1 - t0, "samples_per_s": steps * batch / (t2 - t1), "skipped": collator.num_skipped}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20, help="steps timed per case (after the first)")
    ap.add_argument("--sizes", default="default", choices=("default", "tiny"),
                    help="corpus sizes (the rows' shapes are the same; tiny builds in seconds)")
    ap.add_argument("--kinds", nargs="+", default=["speech", "vision", "sft"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--step-ms", type=float, default=0.0,
                    help="a simulated training step after each batch (a sleep, as when an accelerator computes): "
                         "samples/s of the whole loop, collation overlapped or not")
    ap.add_argument("--prefetch", action="store_true", help="also 0 workers with training.prefetch's thread")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of this process (in-process collation; default: torch's, one per core)")
    ap.add_argument("--json", default=None, help="also write every figure to this file")
    args = ap.parse_args(argv)

    import torch

    from molora import MoLoRAProcessor
    from molora.data.manifest import read_manifest
    from molora.quickstart import PLAN

    if args.threads:
        torch.set_num_threads(args.threads)
    manifests = quickstart_manifests(args.sizes, args.seed)
    processor = MoLoRAProcessor.from_pretrained("tiny")
    print(f"torch threads in this process: {torch.get_num_threads()}; {args.steps} steps per case"
          + (f", each followed by a {args.step_ms:g} ms step" if args.step_ms else ""))
    cases = [(w, False) for w in args.workers] + ([(0, True)] if args.prefetch else [])
    results = {}
    for kind in args.kinds:
        samples = read_manifest(manifests[kind])
        plan = PLAN[kind]
        batch = plan["batch"] if args.sizes != "tiny" else 4
        for w, thread in cases:
            r = measure(samples, processor, batch=batch, group=plan.get("group_by_length", True), workers=w,
                        steps=args.steps, seed=args.seed, step_s=args.step_ms / 1000, prefetch=thread)
            name = f"{w}+thread" if thread else str(w)
            results[f"{kind}/{name}"] = {"kind": kind, "workers": name, "batch": batch, **r}
            print(f"{kind:7s} batch {batch:3d}  workers {name:8s}: {r['samples_per_s']:8.1f} samples/s  "
                  f"(first step {r['first_step_s']:.2f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
