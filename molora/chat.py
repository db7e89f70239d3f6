"""Chat: the multimodal chat Python API over a MoLoRAModel and its processor.

    chat = Chat(model, processor)
    chat.generate(messages, max_new_tokens=64)        # str (list[str] for a list of conversations)
    for piece in chat.stream(messages): print(piece, end="")
"""
from __future__ import annotations

import math
import os
import threading
from queue import Queue

import torch

from .errors import ArgumentError, MoLoRAError
from .sampling import Sampler, repetition_penalty


STREAM_KWARGS = {"temperature", "top_p", "top_k", "repetition_penalty", "seed", "do_sample", "stop"}


def _as_list(media, kind: str) -> list:
    """One image / clip or a list of them (a path string is one file, not a list of characters)."""
    if media is None:
        return []
    from PIL import Image

    if isinstance(media, (str, os.PathLike, Image.Image)):
        return [media]
    if kind == "audio" and isinstance(media, tuple) and len(media) == 2 and isinstance(media[1], (int, float)) \
            and not isinstance(media[0], (str, os.PathLike)):
        return [media]  # (samples, sampling_rate)
    return list(media)


class Chat:
    """Limits: ``max_context`` tokens (prompt + new tokens), ``max_new_tokens_limit`` per call, and
    items of each of the model's modalities per conversation (``Modality.chat_limit``: 64 images,
    16 audio clips; ``max_items={name: n}`` sets any, ``max_images`` / ``max_audios`` the image and
    audio ones); a request beyond them gets a MoLoRAError."""

    def __init__(self, model, processor, system_prompt: str | None = None, max_context: int | None = None,
                 max_new_tokens_limit: int = 4096, max_images: int | None = None, max_audios: int | None = None,
                 max_items: dict[str, int] | None = None):
        self.model, self.processor = model, processor
        self.system_prompt = system_prompt
        self.max_context = max_context or model.config.backbone.max_position_embeddings
        self.max_new_tokens_limit = max_new_tokens_limit
        self.modalities = model.config.modality_entries()
        given = {"image": max_images, "audio": max_audios, **(max_items or {})}
        self.max_items = {m.name: m.chat_limit if given.get(m.name) is None else given[m.name]
                          for m in self.modalities}

    def session(self, system_prompt: str | None = None) -> "ChatSession":
        """A multi-turn conversation that keeps its history."""
        return ChatSession(self, system_prompt if system_prompt is not None else self.system_prompt)

    def _check_media(self, convs) -> None:
        for c, conv in enumerate(convs):
            parts = [p for m in conv if isinstance(m.get("content"), list) for p in m["content"] if isinstance(p, dict)]
            for entry in self.modalities:
                n, limit = sum(p.get("type") == entry.content_type for p in parts), self.max_items[entry.name]
                if n > limit:
                    raise MoLoRAError(f"{n} {entry.items} exceed the limit of {limit} per conversation",
                                      f"conversation[{c}]")

    @staticmethod
    def check_generation_args(max_new_tokens: int = 64, temperature=None, top_p=None, top_k=None,
                              repetition_penalty=None, seed=None, max_new_tokens_limit: int = 4096, **_) -> None:
        """Refuse out-of-range generation settings with an ArgumentError naming the setting."""
        def bad(name, want, value):
            raise ArgumentError(f"must be {want}, got {value!r}", name)

        def number(x) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or not 1 <= max_new_tokens <= max_new_tokens_limit:
            bad("max_new_tokens", f"an integer in [1, {max_new_tokens_limit}]", max_new_tokens)
        if temperature is not None and not (number(temperature) and temperature >= 0):
            bad("temperature", ">= 0 (0 or unset: greedy decoding)", temperature)
        if top_p is not None and not (number(top_p) and 0 < top_p <= 1):
            bad("top_p", "in (0, 1]", top_p)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            bad("top_k", "an integer >= 1 (0 or unset: no top-k cut)", top_k)
        if repetition_penalty is not None and not (number(repetition_penalty) and repetition_penalty > 0):
            bad("repetition_penalty", "> 0 (1: none)", repetition_penalty)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            bad("seed", "an integer", seed)

    @staticmethod
    def _check_messages(messages) -> bool:
        """True for one conversation, False for a list of them; anything else is an ArgumentError."""
        hint = ("a conversation is a list of {'role': ..., 'content': ...} dicts (or pass a list of conversations); "
                "for one user message write [{'role': 'user', 'content': TEXT}], or use chat.session().ask(TEXT)")
        if isinstance(messages, dict):
            raise ArgumentError(f"got one message dict; {hint}", "messages")
        if not isinstance(messages, (list, tuple)):
            raise ArgumentError(f"got {type(messages).__name__} {str(messages)[:40]!r}; {hint}", "messages")
        single = bool(messages) and isinstance(messages[0], dict)
        for c, conv in enumerate([messages] if single else messages):
            where = "messages" if single else f"messages[{c}]"
            if not isinstance(conv, (list, tuple)) or not conv:
                raise ArgumentError(f"expected a non-empty list of message dicts, got {type(conv).__name__}; {hint}",
                                    where)
            for j, m in enumerate(conv):
                if not isinstance(m, dict):
                    raise ArgumentError(f"expected a message dict, got {type(m).__name__} {str(m)[:40]!r}; {hint}",
                                        f"{where}[{j}]")
        return single

    def _conversations(self, messages):
        single = self._check_messages(messages)
        convs = [messages] if single else list(messages)
        if self.system_prompt:
            convs = [c if c and c[0].get("role") == "system" else [{"role": "system", "content": self.system_prompt}, *c]
                     for c in convs]
        return single, convs

    def _prepare(self, messages, max_new_tokens):
        self.check_generation_args(max_new_tokens, max_new_tokens_limit=self.max_new_tokens_limit)
        if not messages:
            raise MoLoRAError("no messages given", "messages")
        single, convs = self._conversations(messages)
        self._check_media(convs)
        batch = self.processor(convs)
        n = batch["input_ids"].shape[1]
        if n + max_new_tokens > self.max_context:
            raise MoLoRAError(f"prompt ({n} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context "
                              f"limit of {self.max_context}", "messages")
        return single, batch

    def _decode_kwargs(self, temperature, top_p, top_k, repetition_penalty_, seed, do_sample):
        self.check_generation_args(temperature=temperature, top_p=top_p, top_k=top_k,
                                   repetition_penalty=repetition_penalty_, seed=seed)
        sample = do_sample if do_sample is not None else temperature not in (None, 0, 0.0)
        sampler = Sampler(temperature or 1.0, top_k or 0, top_p or 1.0, seed) if sample else None
        proc = None
        if repetition_penalty_ and repetition_penalty_ != 1.0:
            proc = lambda hist, scores: repetition_penalty(hist, scores, repetition_penalty_)  # noqa: E731
        return sampler, proc

    @staticmethod
    def _stops(stop) -> list[str]:
        """``stop`` as a list of strings (one string is one stop string, not its characters)."""
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, (list, tuple)) else None
        if stops is None or not all(isinstance(x, str) and x for x in stops):
            raise ArgumentError(f"must be a non-empty string or a list of them, got {stop!r}", "stop")
        return stops

    def _cut(self, text: str, stop: list[str] | None) -> str:
        for s in stop or []:
            i = text.find(s)
            if i >= 0:
                text = text[:i]
        return text

    @torch.no_grad()
    def generate(self, messages, max_new_tokens: int = 64, *, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, repetition_penalty: float | None = None,
                 stop: list[str] | None = None, seed: int | None = None, do_sample: bool | None = None):
        stop = self._stops(stop)
        sampler, proc = self._decode_kwargs(temperature, top_p, top_k, repetition_penalty, seed, do_sample)
        single, batch = self._prepare(messages, max_new_tokens)
        ids = self.model.generate(**batch, max_new_tokens=max_new_tokens, sampler=sampler, logits_processor=proc)
        texts = [self._cut(t, stop) for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return texts[0] if single else texts

    def stream(self, messages, max_new_tokens: int = 64, **kwargs):
        """Yield text pieces of one conversation as they are generated."""
        unknown = sorted(set(kwargs) - STREAM_KWARGS)
        if unknown:
            raise ArgumentError(f"unknown generation setting(s) {unknown}; known: {sorted(STREAM_KWARGS)}", "stream")
        single, convs = self._conversations(messages)
        if len(convs) != 1:
            raise MoLoRAError("stream takes one conversation", "messages")
        stop = self._stops(kwargs.pop("stop", None))
        sampler, proc = self._decode_kwargs(kwargs.get("temperature"), kwargs.get("top_p"), kwargs.get("top_k"),
                                            kwargs.get("repetition_penalty"), kwargs.get("seed"),
                                            kwargs.get("do_sample"))
        _, batch = self._prepare(convs[0], max_new_tokens)
        queue: Queue = Queue()
        tokens: list[int] = []

        def on_token(nxt, done):
            if not bool(done[0]):
                queue.put(int(nxt[0]))

        def run():
            from .generation import decode_loop

            try:
                with torch.no_grad():
                    decode_loop(self.model, **batch, max_new_tokens=max_new_tokens, sampler=sampler,
                                logits_processor=proc, streamer=on_token)
            except BaseException as e:  # surfaced in the consumer
                queue.put(e)
            queue.put(None)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        emitted = ""
        # a stop string may still be forming at the end: hold back that many characters minus one
        holdback = max((len(x) for x in stop or []), default=1) - 1
        while (item := queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            tokens.append(item)
            text = self._cut(self.processor.decode(tokens, skip_special_tokens=True), stop)
            # hold back an incomplete UTF-8 sequence (shown as U+FFFD until its last byte arrives)
            if holdback:
                text = text[: max(0, len(text) - holdback)]
            if text.endswith("\ufffd") or not text.startswith(emitted):
                continue
            if len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
        final = self._cut(self.processor.decode(tokens, skip_special_tokens=True), stop)
        if final != emitted and final.startswith(emitted):
            yield final[len(emitted):]
        worker.join()


class ChatSession:
    """Multi-turn chat: each ``ask`` adds the user turn and the model's reply to ``history``."""

    def __init__(self, chat: Chat, system_prompt: str | None = None):
        self.chat = chat
        self.history: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []

    @staticmethod
    def user_turn(text: str = "", images=(), audios=()) -> dict:
        if not isinstance(text, str):
            raise ArgumentError(f"the message text must be a string, got {type(text).__name__}", "text")
        content = [{"type": "image", "image": im} for im in _as_list(images, "image")]
        content += [{"type": "audio", "audio": au} for au in _as_list(audios, "audio")]
        if text:
            content.append({"type": "text", "text": text})
        return {"role": "user", "content": content}

    def ask(self, text: str = "", images=(), audios=(), **generate_kwargs) -> str:
        turn = self.user_turn(text, images, audios)
        reply = self.chat.generate(self.history + [turn], **generate_kwargs)
        self.history += [turn, {"role": "assistant", "content": reply}]
        return reply

    def stream(self, text: str = "", images=(), audios=(), **generate_kwargs):
        turn = self.user_turn(text, images, audios)
        pieces = []
        for piece in self.chat.stream(self.history + [turn], **generate_kwargs):
            pieces.append(piece)
            yield piece
        self.history += [turn, {"role": "assistant", "content": "".join(pieces)}]

    def reset(self) -> None:
        self.history = [m for m in self.history if m["role"] == "system"]
