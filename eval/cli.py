"""`molora eval {asr,docvqa,chartqa,rescore}`: the sub-subcommands, registered on the `molora` parser.

Only argparse is imported here; each runner imports torch and the model when it runs.
"""
from __future__ import annotations

import argparse

__all__ = ["add_eval_parser"]

_RUNNERS = {
    "asr": ("WER / RTFx on the Open ASR leaderboard sets, local datasets or manifests", "molora.eval.asr"),
    "docvqa": ("ANLS on DocVQA validation, or the test-split submission file", "molora.eval.docvqa"),
    "chartqa": ("relaxed accuracy on ChartQA (human / augmented / overall)", "molora.eval.chartqa"),
    "rescore": ("score an earlier run's saved predictions again (another ASR protocol), without the model",
                "molora.eval.rescore"),
}


_AT_LEAST = {"batch_size": ("--batch-size", 1), "max_new_tokens": ("--max-new-tokens", 1), "limit": ("--limit", 1),
             "warmup_batches": ("--warmup-batches", 0)}


def check_arguments(args) -> None:
    """Numbers out of range and an --output-dir that is a file are errors before anything loads."""
    from pathlib import Path

    from molora.errors import ConfigError

    for name, (flag, low) in _AT_LEAST.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise ConfigError(f"must be at least {low}, got {value}", flag)
    if getattr(args, "output_dir", None) is None:   # rescore: reads a run's folder, writes next to its summary
        return
    out = Path(args.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --output-dir takes a folder (created when missing)", "--output-dir")
    from molora.staging import check_folder_path

    check_folder_path(out)  # a file above it: bad input (exit 2), as convert says


def _folder(args):
    """The folder the command writes into: --output-dir, or (rescore) the run's own folder."""
    from pathlib import Path

    if getattr(args, "output_dir", None):
        return Path(args.output_dir).expanduser()
    run_dir = Path(getattr(args, "run_dir", None) or "").expanduser()
    return run_dir if getattr(args, "run_dir", None) and run_dir.is_dir() else None  # else rescore says what is wrong


def _run(args) -> int:
    """Run the task holding its folder: a second `molora eval` (or train) into it is refused, so two
    processes never write one results file (see molora/folder_lock.py)."""
    import importlib
    from contextlib import nullcontext

    from molora.folder_lock import hold_folder

    check_arguments(args)
    folder = _folder(args)
    holding = hold_folder(folder, what=f"molora eval {args.eval_task}") if folder is not None else nullcontext()
    with holding:
        return importlib.import_module(_RUNNERS[args.eval_task][1]).main(args)


def add_eval_parser(sub) -> argparse.ArgumentParser:
    """Add `eval` to the `molora` subparsers ``sub``; returns the `eval` parser."""
    import importlib

    e = sub.add_parser("eval", help="evaluate a model: asr (WER), docvqa (ANLS), chartqa (relaxed accuracy); "
                                    "rescore an earlier run",
                       description="Each task writes per-item JSONL results and summary.json + summary.md to "
                                   "--output-dir; re-running the same command resumes. `rescore DIR` scores a "
                                   "run's saved predictions again (e.g. with another ASR --protocol).")
    tasks = e.add_subparsers(dest="eval_task", required=True, metavar="{asr,docvqa,chartqa,rescore}")
    for name, (help_, module) in _RUNNERS.items():
        mod = importlib.import_module(module)
        p = tasks.add_parser(name, help=help_, description=mod.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(func=_run)
    return e
