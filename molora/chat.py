"""Chat: the multimodal chat Python API over a MoLoRAModel and its processor.

    chat = Chat(model, processor)
    chat.generate(messages, max_new_tokens=64)        # str (list[str] for a list of conversations)
    for piece in chat.stream(messages): print(piece, end="")
"""
from __future__ import annotations

import threading
from queue import Queue

import torch

from .errors import MoLoRAError
from .sampling import Sampler, repetition_penalty


class Chat:
    """Limits: ``max_context`` tokens (prompt + new tokens), ``max_new_tokens_limit`` per call,
    ``max_images`` / ``max_audios`` per conversation; a request beyond them gets a MoLoRAError."""

    def __init__(self, model, processor, system_prompt: str | None = None, max_context: int | None = None,
                 max_new_tokens_limit: int = 4096, max_images: int = 64, max_audios: int = 16):
        self.model, self.processor = model, processor
        self.system_prompt = system_prompt
        self.max_context = max_context or model.config.backbone.max_position_embeddings
        self.max_new_tokens_limit = max_new_tokens_limit
        self.max_images, self.max_audios = max_images, max_audios

    def session(self, system_prompt: str | None = None) -> "ChatSession":
        """A multi-turn conversation that keeps its history."""
        return ChatSession(self, system_prompt if system_prompt is not None else self.system_prompt)

    def _check_media(self, convs) -> None:
        for c, conv in enumerate(convs):
            parts = [p for m in conv if isinstance(m.get("content"), list) for p in m["content"] if isinstance(p, dict)]
            n_img = sum(p.get("type") == "image" for p in parts)
            n_aud = sum(p.get("type") == "audio" for p in parts)
            if n_img > self.max_images:
                raise MoLoRAError(f"{n_img} images exceed the limit of {self.max_images} per conversation",
                                  f"conversation[{c}]")
            if n_aud > self.max_audios:
                raise MoLoRAError(f"{n_aud} audio clips exceed the limit of {self.max_audios} per conversation",
                                  f"conversation[{c}]")

    def _conversations(self, messages):
        single = bool(messages) and isinstance(messages[0], dict)
        convs = [messages] if single else list(messages)
        if self.system_prompt:
            convs = [c if c and c[0].get("role") == "system" else [{"role": "system", "content": self.system_prompt}, *c]
                     for c in convs]
        return single, convs

    def _prepare(self, messages, max_new_tokens):
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= self.max_new_tokens_limit:
            raise MoLoRAError(f"must be an integer in [1, {self.max_new_tokens_limit}], got {max_new_tokens!r}",
                              "max_new_tokens")
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
        sample = do_sample if do_sample is not None else temperature not in (None, 0, 0.0)
        sampler = Sampler(temperature or 1.0, top_k or 0, top_p or 1.0, seed) if sample else None
        proc = None
        if repetition_penalty_ and repetition_penalty_ != 1.0:
            proc = lambda hist, scores: repetition_penalty(hist, scores, repetition_penalty_)  # noqa: E731
        return sampler, proc

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
        single, batch = self._prepare(messages, max_new_tokens)
        sampler, proc = self._decode_kwargs(temperature, top_p, top_k, repetition_penalty, seed, do_sample)
        ids = self.model.generate(**batch, max_new_tokens=max_new_tokens, sampler=sampler, logits_processor=proc)
        texts = [self._cut(t, stop) for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return texts[0] if single else texts

    def stream(self, messages, max_new_tokens: int = 64, **kwargs):
        """Yield text pieces of one conversation as they are generated."""
        single, convs = self._conversations(messages)
        if len(convs) != 1:
            raise MoLoRAError("stream takes one conversation", "messages")
        _, batch = self._prepare(convs[0], max_new_tokens)
        stop = kwargs.pop("stop", None)
        sampler, proc = self._decode_kwargs(kwargs.get("temperature"), kwargs.get("top_p"), kwargs.get("top_k"),
                                            kwargs.get("repetition_penalty"), kwargs.get("seed"),
                                            kwargs.get("do_sample"))
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
        content = [{"type": "image", "image": im} for im in images]
        content += [{"type": "audio", "audio": au} for au in audios]
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
