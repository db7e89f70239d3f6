"""The `molora` command line: one entry point, subcommands."""
from __future__ import annotations

import argparse
import os
import sys


def _train(args) -> int:
    from .stages.trainer import run

    import torch.distributed as dist

    try:
        run(args.recipe, args.overrides, args.output_dir, resume=args.resume, strict=args.strict or None,
            cpu=args.cpu)
    finally:  # a process group left open aborts some workers at interpreter exit (gloo threads)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _chat(args) -> int:
    from .errors import MoLoRAError

    from . import MoLoRAModel, MoLoRAProcessor
    from .chat import Chat

    model = MoLoRAModel.from_pretrained(args.model).eval()
    processor = MoLoRAProcessor.from_pretrained(args.model)
    chat = Chat(model, processor, system_prompt=args.system)
    gen = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
           "top_k": args.top_k, "seed": args.seed}
    session = chat.session()
    if args.prompt or args.image or args.audio:  # one shot
        for piece in session.stream(" ".join(args.prompt), images=args.image or (), audios=args.audio or (), **gen):
            print(piece, end="", flush=True)
        print()
        return 0
    print("molora chat: type a message; /image PATH and /audio PATH attach media to the next message, "
          "/reset clears the history, /quit leaves.")
    images, audios = [], []
    for line in sys.stdin:
        line = line.strip()
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            continue
        if line.startswith("/image "):
            images.append(line[7:].strip())
            continue
        if line.startswith("/audio "):
            audios.append(line[7:].strip())
            continue
        if not line and not images and not audios:
            continue
        try:
            for piece in session.stream(line, images=images, audios=audios, **gen):
                print(piece, end="", flush=True)
            print()
        except MoLoRAError as e:
            print(f"error: {e}", file=sys.stderr)
        images, audios = [], []
    return 0


def _demo(args) -> int:
    from .demo import main

    main()
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import MoLoRAError

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

    c = sub.add_parser("chat", help="chat with a model: one shot (prompt / --image / --audio) or interactive")
    c.add_argument("--model", required=True, help="model directory, hub id, or preset name (tiny)")
    c.add_argument("--image", action="append", help="an image for the (first) message; repeatable")
    c.add_argument("--audio", action="append", help="an audio file for the (first) message; repeatable")
    c.add_argument("--system", help="system prompt")
    g = c.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    c.add_argument("prompt", nargs="*", help="the message (omit for an interactive session)")
    c.set_defaults(func=_chat)

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
    try:
        return args.func(args)
    except MoLoRAError as e:
        print(f"molora {args.command}: error: {e}", file=sys.stderr)
        return 2


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
