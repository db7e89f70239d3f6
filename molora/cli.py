"""The `molora` command line: one entry point, subcommands."""
from __future__ import annotations

import argparse
import sys


def _train(args) -> int:
    from .stages.trainer import run

    run(args.recipe, args.overrides, args.output_dir, resume=args.resume, strict=args.strict or None, cpu=args.cpu)
    return 0


def _demo(args) -> int:
    from .demo import main

    main()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="molora", description="Mixture-of-LoRAs multimodal models")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run a stage recipe (vision, speech, joint, sft, dpo)",
                       description="molora train --recipe NAME_OR_PATH [key=value ...] --output-dir DIR [--resume]. "
                                   "Launch as is (one process) or through `accelerate launch -m molora.cli train ...`.")
    g = t.add_argument_group("what to run")
    g.add_argument("--recipe", required=True, help="packaged recipe name (e.g. tiny-speech) or a YAML path")
    g.add_argument("overrides", nargs="*", help="key=value overrides: data.train=PATH max_steps=N seed=N ...")
    g = t.add_argument_group("where and how")
    g.add_argument("--output-dir", required=True, help="checkpoints/, final/, metrics.jsonl, summary.json go here")
    g.add_argument("--resume", action="store_true", help="continue exactly from the newest checkpoint in DIR")
    g.add_argument("--strict", action="store_true", help="a bad media file stops the run instead of being skipped")
    g.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    t.set_defaults(func=_train)

    d = sub.add_parser("demo", help="the model core end to end, offline")
    d.set_defaults(func=_demo)

    args, extra = ap.parse_known_args(argv)
    # key=value overrides may come before or after the options
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        ap.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from .errors import MoLoRAError

    try:
        return args.func(args)
    except MoLoRAError as e:
        print(f"molora {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
