"""`molora eval {asr,docvqa,chartqa}`: the sub-subcommands, registered on the `molora` parser.

Only argparse is imported here; each runner imports torch and the model when it runs.
"""
from __future__ import annotations

import argparse

__all__ = ["add_eval_parser"]

_RUNNERS = {
    "asr": ("WER / RTFx on the Open ASR leaderboard sets, local datasets or manifests", "molora.eval.asr"),
    "docvqa": ("ANLS on DocVQA validation, or the test-split submission file", "molora.eval.docvqa"),
    "chartqa": ("relaxed accuracy on ChartQA (human / augmented / overall)", "molora.eval.chartqa"),
}


def _run(args) -> int:
    import importlib

    return importlib.import_module(_RUNNERS[args.eval_task][1]).main(args)


def add_eval_parser(sub) -> argparse.ArgumentParser:
    """Add `eval` to the `molora` subparsers ``sub``; returns the `eval` parser."""
    import importlib

    e = sub.add_parser("eval", help="evaluate a model: asr (WER), docvqa (ANLS), chartqa (relaxed accuracy)",
                       description="Each task writes per-item JSONL results and summary.json + summary.md to "
                                   "--output-dir; re-running the same command resumes.")
    tasks = e.add_subparsers(dest="eval_task", required=True, metavar="{asr,docvqa,chartqa}")
    for name, (help_, module) in _RUNNERS.items():
        mod = importlib.import_module(module)
        p = tasks.add_parser(name, help=help_, description=mod.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(func=_run)
    return e
