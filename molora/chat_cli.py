"""`molora chat`: one answer (prompt / --image / --audio given), or an interactive session.

The interactive session reads one line at a time after a ``you> `` prompt. Lines that start with
``/`` are commands, answered at once and never sent to the model:

    /image PATH   attach an image to the next message (checked now: it must open as an image)
    /audio PATH   attach an audio clip to the next message (checked now: it must decode)
    /reset        forget the conversation (and any attachment not yet sent)
    /help         this list
    /quit, /exit  leave (so does Ctrl-D)
"""
from __future__ import annotations

import sys

__all__ = ["add_parser", "Repl", "COMMANDS"]

COMMANDS = {
    "/image PATH": "attach an image to your next message",
    "/audio PATH": "attach an audio clip to your next message",
    "/reset": "forget the conversation so far",
    "/help": "show these commands",
    "/quit": "leave (also /exit or Ctrl-D)",
}
PROMPT = "you> "


def help_text() -> str:
    return "commands:\n" + "\n".join(f"  {k:12s} {v}" for k, v in COMMANDS.items())


class Repl:
    """The interactive loop over a ChatSession; ``out`` / ``err`` are text streams (tests pass buffers)."""

    def __init__(self, session, generate_kwargs: dict, out=None, err=None):
        self.session, self.gen = session, generate_kwargs
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.images: list = []
        self.audios: list = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _attach(self, kind: str, arg: str) -> None:
        from .errors import MediaError

        path = arg.strip().strip("'\"")
        if not path:
            self.say(f"usage: /{kind} PATH ({COMMANDS[f'/{kind} PATH']})")
            return
        try:
            if kind == "image":
                from .encoders.image_transform import load_image

                img = load_image(path, max_pixels=self.session.chat.processor.config.vision.max_image_pixels)
                value, detail = img, f"{img.size[0]}x{img.size[1]}"
            else:
                from .encoders.audio_features import load_audio

                samples, rate = load_audio(path)
                value, detail = (samples, rate), f"{len(samples) / rate:.1f} s at {rate} Hz"
        except MediaError as e:
            print(f"error: {e} (not attached)", file=self.err, flush=True)
            return
        (self.images if kind == "image" else self.audios).append(value)
        self.say(f"[attached {kind} {path} ({detail}); it goes with your next message]")

    def command(self, line: str) -> bool:
        """Handle a /command; False when the session should end."""
        name, _, arg = line.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name in ("/image", "/audio"):
            self._attach(name[1:], arg)
        elif name == "/reset":
            self.session.reset()
            self.images, self.audios = [], []
            self.say("[conversation cleared]")
        elif name == "/help":
            self.say(help_text())
        else:
            self.say(f"unknown command {name}; /help lists the commands (a message starting with / needs a "
                     "leading space)")
        return True

    def ask(self, text: str) -> None:
        from .errors import MoLoRAError

        try:
            text = prompt_for(text, self.images, self.audios)
            for piece in self.session.stream(text, images=self.images, audios=self.audios, **self.gen):
                print(piece, end="", file=self.out, flush=True)
            print(file=self.out, flush=True)
        except MoLoRAError as e:
            print(f"error: {e}", file=self.err, flush=True)
        self.images, self.audios = [], []

    def run(self, lines) -> None:
        self.say("molora chat: type a message; /help lists the commands, /quit leaves.")
        while True:
            print(PROMPT, end="", file=self.out, flush=True)
            line = next(lines, None)
            if line is None:  # end of input (Ctrl-D)
                print(file=self.out, flush=True)
                return
            line = line.rstrip("\n")
            stripped = line.strip()
            if stripped.startswith("/") and not line.startswith(" "):
                if not self.command(stripped):
                    return
                continue
            if not stripped and not self.images and not self.audios:
                continue
            self.ask(stripped)


def prompt_for(text: str, images, audios) -> str:
    """The message text: a clip sent with no words is a request to transcribe it (the prompt the speech
    adapter is trained with, molora.prompts.ASR_PROMPT)."""
    from .prompts import ASR_PROMPT

    return ASR_PROMPT if not text.strip() and audios and not images else text


def _run(args) -> int:
    from . import MoLoRAModel, MoLoRAProcessor
    from .chat import Chat

    gen = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
           "top_k": args.top_k, "seed": args.seed}
    Chat.check_generation_args(**gen)  # bad sampling settings fail before the model loads
    model = MoLoRAModel.from_pretrained(args.model, quantization_config=getattr(args, "quantization", None)).eval()
    processor = MoLoRAProcessor.from_pretrained(args.model)
    session = Chat(model, processor, system_prompt=args.system).session()
    if args.prompt or args.image or args.audio:  # one shot
        text = prompt_for(" ".join(args.prompt), args.image, args.audio)
        for piece in session.stream(text, images=args.image or (), audios=args.audio or (), **gen):
            print(piece, end="", flush=True)
        print()
        return 0
    Repl(session, gen).run(iter(sys.stdin.readline, ""))
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("chat", help="chat with a model: one shot (prompt / --image / --audio) or interactive",
                       description=__doc__.split("\n\n")[0])
    c.add_argument("--model", required=True, help="model directory, hub id, or preset name (tiny)")
    c.add_argument("--image", action="append", help="an image for the (first) message; repeatable")
    c.add_argument("--audio", action="append", help="an audio file for the (first) message; repeatable")
    c.add_argument("--system", help="system prompt")
    c.add_argument("--quantization", choices=("int8", "int4", "nf4"),
                   help="quantise the frozen base (weight-only; adapters and projectors keep their dtype)")
    g = c.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the smallest set of tokens "
                                                              "reaching this probability, in (0, 1]")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (k >= 1)")
    g.add_argument("--seed", type=int, default=None)
    c.add_argument("prompt", nargs="*", help="the message (omit for an interactive session)")
    c.set_defaults(func=_run)
