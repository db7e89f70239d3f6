"""Is this checkout slower than an earlier commit? ``bench_core``'s cases for both, side by side in one run.

    .venv/bin/python benchmarks/compare_commits.py BASE [--cases train,asr] [--rounds 3] [--preset small]

BASE's package is checked out into a temporary folder (``git worktree``) and imported from there
through ``PYTHONPATH`` (a folder of links that mirrors the installed package layout: ``molora``,
``molora.stages`` -> ``stages/``, ...); this checkout's imports as installed. Each case runs ``bench_core.py``'s child for BASE (BASE's own copy of the
script, written against its names), for this checkout and for the reference stack, alternating over ``--rounds`` rounds, each side's best round counting (on a
shared machine a round can land on a busy stretch). Prints each side's figure, head / base (higher is
better) and both sides' ratios to the reference, the figure ``make bench`` reports.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_core.py"
# the installed package layout (pyproject.toml [tool.setuptools.package-dir])
PACKAGE_DIRS = {"encoders": "encoders", "adapters": "adapters", "stages": "stages", "eval": "eval"}
DEFAULT_CASES = "image,audio,train,asr,generate1,generate16"


def package_view(tree: Path, into: Path) -> Path:
    """A folder holding ``molora/`` as installed from ``tree``: links to each entry of ``tree/molora``
    and to the folders the package maps in (``molora/stages`` -> ``tree/stages``, ...)."""
    pkg = into / "molora"
    pkg.mkdir(parents=True)
    for entry in (tree / "molora").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for name, folder in PACKAGE_DIRS.items():
        if (tree / folder).is_dir() and not (pkg / name).exists():
            (pkg / name).symlink_to(tree / folder)
    return into


def run_child(case: str, impl: str, args, workdir: str, pythonpath: str | None, bench: Path) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, str(bench), "--preset", args.preset, "--repeats", str(args.repeats),
                          "--threads", str(args.threads), "--child", case, impl, workdir],
                         capture_output=True, text=True, env=env, check=False, cwd=workdir)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if not line:
        raise SystemExit(f"{case}/{impl} ({pythonpath or 'this checkout'}) failed:\n{out.stderr[-3000:]}")
    return json.loads(line[0][7:])


def imported_from(pythonpath: str | None, cwd: Path) -> str:
    """Where a child imports ``molora`` and ``molora.stages`` from (run outside any checkout: ``python -c``
    would put the working folder first on the path)."""
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    return subprocess.run([sys.executable, "-c", "import molora.stages as s, molora; print(molora.__file__, s.__file__)"],
                          capture_output=True, text=True, env=env, check=True, cwd=cwd).stdout.strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="the earlier commit (any git revision)")
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    # a killed comparison still removes its worktree (the finally below): SIGTERM becomes SystemExit
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(BENCH.parent))
    import bench_core

    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], capture_output=True, text=True,
                         check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True)
        try:
            view = str(package_view(tree, Path(tmp) / "view"))
            weights = Path(tmp) / "weights"
            weights.mkdir()
            where = {"base": imported_from(view, weights), "head": imported_from(None, weights)}
            print(f"base {rev}: {where['base']}\nhead {head} (this checkout): {where['head']}")
            base_files = [Path(f).resolve() for f in where["base"].split()]
            if not all(tree.resolve() in f.parents for f in base_files) or str(tree) in where["head"]:
                raise SystemExit(f"the two sides do not import their own package: {where}")
            cases = args.cases.split(",")
            if any(c in ("train", "asr", "generate1", "generate16") for c in cases):
                bench_core._prepare_weights(args.preset, weights)  # this checkout writes; both sides read
            if any(c in bench_core.VOCAB_CASES for c in cases):
                bench_core._prepare_vocab_weights(args.preset, weights)
            sides = {"base": ("molora", view, tree / "benchmarks" / "bench_core.py"), "head": ("molora", None, BENCH),
                     "reference": ("reference", None, BENCH)}
            print(f"{'case':10s} {'base':>12s} {'head':>12s} {'head/base':>9s} {'base/ref':>9s} {'head/ref':>9s}")
            results = {}
            for case in cases:
                best: dict[str, dict] = {}
                for _ in range(args.rounds):
                    for side, (impl, path, bench) in sides.items():
                        res = run_child(case, impl, args, str(weights), path, bench)
                        value = bench_core.VOCAB_TOKENS / min(res["times"]) if case in bench_core.VOCAB_CASES \
                            else res["value"]
                        if side not in best or value > best[side]["value"]:
                            best[side] = dict(res, value=value)
                b, h, r = (best[s]["value"] for s in ("base", "head", "reference"))
                results[case] = {"unit": best["head"]["unit"], "base": b, "head": h, "reference": r,
                                 "head_over_base": h / b, "base_over_reference": b / r, "head_over_reference": h / r}
                print(f"{case:10s} {b:9.2f}{best['head']['unit']:>3s} {h:9.2f}{'':3s} {h / b:8.2f}x {b / r:8.2f}x "
                      f"{h / r:8.2f}x", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    if args.json:
        Path(args.json).write_text(json.dumps({"base": rev, "head": head, "rounds": args.rounds,
                                               "preset": args.preset, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
