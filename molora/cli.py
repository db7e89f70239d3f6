"""The `molora` command line: one entry point, subcommands."""
from __future__ import annotations

import argparse
import errno
import os
import sys


def _stage_table() -> str:
    """One line per stage (rows, sub-steps), then its description and its own settings with their defaults."""
    from dataclasses import fields

    from .stages.table import STAGES

    lines = ["stage   trains on            sub-steps (components trained)"]
    for st in STAGES.values():
        subs = "; ".join(f"{s['name']} ({', '.join(s['train'])})" for s in st.substeps)
        lines.append(f"{st.name:7s} {', '.join(st.data_kinds):20s} {subs}")
        own = [f"{st.name}.{f.name}={getattr(st.settings(), f.name)!r}" for f in fields(st.settings)] \
            if st.settings is not None else []
        lines.append(" " * 8 + st.description + (f" (settings: {', '.join(own)})" if own else ""))
    return "\n".join(lines)


def _train(args) -> int:
    from .errors import ArgumentError
    from .stages.recipe import load_recipe, stage_recipe
    from .stages.trainer import train

    import torch.distributed as dist

    if args.list_stages:
        print(_stage_table())
        return 0
    if bool(args.recipe) == bool(args.stage):
        raise ArgumentError("give --recipe NAME_OR_PATH or --stage NAME (molora train --list-stages lists the stages)",
                            "molora train")
    if not args.output_dir:
        raise ArgumentError("--output-dir is required", "molora train")
    recipe = load_recipe(args.recipe, args.overrides) if args.recipe else stage_recipe(args.stage, args.overrides)
    try:
        train(recipe, args.output_dir, resume=args.resume, strict=args.strict or None, cpu=args.cpu,
              overwrite=args.overwrite, resume_anyway=args.resume_anyway)
    finally:  # a process group left open aborts some workers at interpreter exit (gloo threads)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _demo(args) -> int:
    from .demo import main

    main()
    return 0


# -- the one top-level handler: known failures -> one line with the next step ----------------------

def _newest_checkpoint(output_dir: str | None):
    if not output_dir:
        return None
    from pathlib import Path

    from .stages.checkpointing import list_checkpoints

    found = list_checkpoints(Path(output_dir) / "checkpoints")
    return found[-1] if found else None


def _rerun(argv: list[str], add: str | None = None, drop: tuple[str, ...] = ()) -> str:
    import shlex

    words = [a for a in argv if a not in drop]
    if add and add not in words:
        words.append(add)
    return "molora " + " ".join(shlex.quote(w) for w in words)


def _next_step(args, argv: list[str]) -> str:
    """What to do after an interrupted or failed command, per subcommand."""
    if args.command == "train":
        newest = _newest_checkpoint(args.output_dir)
        if newest is None:
            return ("no checkpoint was written yet (save_every=N writes them); start again with: "
                    + _rerun(argv, "--overwrite", drop=("--resume", "--resume-anyway")))
        return (f"the newest checkpoint is {newest[1]} (step {newest[0]}; later steps are trained again); "
                f"continue with: {_rerun(argv, '--resume', drop=('--overwrite',))}")
    if args.command == "eval":
        return "rerun the same command to continue: the items already written are kept"
    if args.command == "quickstart":
        return "rerun it to start again (the synthetic corpora built so far are cached)"
    if args.command == "convert":
        return f"the destination is as it was (nothing is moved in until all is written): {_rerun(argv)}"
    return ""


def _os_error_line(e: OSError) -> str:
    where = e.filename or ""
    reasons = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "read-only file system",
               errno.ENOTDIR: "a part of this path is a file, not a folder",
               errno.EISDIR: "is a folder, not a file", errno.ENOENT: "no such file or folder",
               errno.EEXIST: "already exists"}
    reason = reasons.get(e.errno, e.strerror or str(e))
    advice = {errno.ENOSPC: "free some space or choose another folder", errno.EDQUOT: "free some space",
              errno.EACCES: "check the folder's permissions or choose another one",
              errno.EPERM: "check the folder's permissions or choose another one",
              errno.EROFS: "choose a writable folder", errno.ENOTDIR: "choose another path"}.get(e.errno)
    line = f"{where}: {reason}" if where else reason
    return line + (f" ({advice})" if advice else "")


# errors the same command meets again (a folder it may not write, a file where a folder belongs):
# the line then gives the advice for the error, not the command to rerun
_NOT_BY_RERUNNING = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR})


def handle(args, argv: list[str], err=None) -> int:
    """Run ``args.func`` and turn known failures into one line on stderr with the next step."""
    from .errors import MoLoRAError
    from .signals import Terminated, sigterm_raises

    err = err or sys.stderr
    head = f"molora {args.command}"
    try:
        with sigterm_raises():
            return args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM: 128 + the signal's number, as a shell reports it
        step = _next_step(args, argv)
        what, code = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"\n{head}: {what}" + (f"; {step}" if step else ""), file=err)
        return code
    except MoLoRAError as e:
        print(f"{head}: error: {e}", file=err)
        return 2
    except OSError as e:
        step = "" if e.errno in _NOT_BY_RERUNNING else _next_step(args, argv)
        print(f"{head}: error: {_os_error_line(e)}" + (f"; {step}" if step else ""), file=err)
        return 1
    except MemoryError:
        print(f"{head}: error: out of memory (lower the batch size: training.micro_batch_size, --batch-size)",
              file=err)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="molora", description="Mixture-of-LoRAs multimodal models")
    sub = ap.add_subparsers(dest="command", required=True)

    from .stages.table import STAGES

    t = sub.add_parser("train", help=f"run a stage ({', '.join(STAGES)}) from a recipe or the stage table",
                       description="molora train --recipe NAME_OR_PATH | --stage NAME [key=value ...] --output-dir DIR "
                                   "[--resume]. Launch as is (one process) or through `accelerate launch -m molora.cli "
                                   "train ...`.")
    g = t.add_argument_group("what to run")
    g.add_argument("--recipe", help="packaged recipe name (e.g. tiny-speech) or a YAML path")
    g.add_argument("--stage", choices=list(STAGES), help="a stage of the table with its defaults (the shipped "
                                                         "pretrained tiny model; override any key, e.g. model.path=DIR, "
                                                         "or model.init=random for a random start)")
    g.add_argument("--list-stages", action="store_true", help="print the stage table and exit")
    g.add_argument("overrides", nargs="*", help="key=value overrides: data.train=PATH max_steps=N seed=N "
                                                "training.lr=3e-4 ... (each checked against its field's type)")
    g = t.add_argument_group("where and how")
    g.add_argument("--output-dir", help="checkpoints/, final/, metrics.jsonl, summary.json go here")
    g.add_argument("--resume", action="store_true", help="continue exactly from the newest checkpoint in DIR "
                                                         "(refused if the recipe, data or model changed)")
    g.add_argument("--resume-anyway", action="store_true", help="resume even though the recipe, data or model "
                                                                "changed (a deliberate change)")
    g.add_argument("--overwrite", action="store_true", help="DIR holds an earlier run: replace it (its "
                                                            "checkpoints, final/, metrics and summaries)")
    g.add_argument("--strict", action="store_true", help="a bad media file or an over-long row stops the run "
                                                         "instead of being skipped")
    g.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    t.set_defaults(func=_train)

    from .chat_cli import add_parser as add_chat_parser

    add_chat_parser(sub)

    from .quickstart import add_parser as add_quickstart_parser

    add_quickstart_parser(sub)

    d = sub.add_parser("demo", help="the model core end to end, offline")
    d.set_defaults(func=_demo)

    from .eval.cli import add_eval_parser  # eval {asr,docvqa,chartqa}

    add_eval_parser(sub)

    from .convert import add_parser as add_convert_parser

    add_convert_parser(sub)

    args, extra = ap.parse_known_args(argv)
    # key=value overrides may come before or after the options
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        ap.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return handle(args, argv)


def _launched_worker() -> bool:
    """One of several processes started by a launcher (accelerate launch, torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def console() -> None:
    """The `molora` program (`molora ...` and `python -m molora.cli ...`): `main()`, then exit.

    A worker of a multi-process launch leaves without interpreter teardown once `main()` has
    returned (its checkpoints, logs and process group are closed by then): gloo's worker threads
    can still hold tensors while the interpreter finalises, which now and then aborted a worker
    with SIGABRT ("terminate called without an active exception") after a finished run (2 of 30
    two-process FSDP2 test runs). Callers of `main()` inside Python are not affected."""
    code = main()
    if _launched_worker():
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
