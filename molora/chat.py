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
    def __init__(self, model, processor, system_prompt: str | None = None, max_context: int | None = None):
        self.model, self.processor = model, processor
        self.system_prompt = system_prompt
        self.max_context = max_context or model.config.backbone.max_position_embeddings

    def _conversations(self, messages):
        single = bool(messages) and isinstance(messages[0], dict)
        convs = [messages] if single else list(messages)
        if self.system_prompt:
            convs = [c if c and c[0].get("role") == "system" else [{"role": "system", "content": self.system_prompt}, *c]
                     for c in convs]
        return single, convs

    def _prepare(self, messages, max_new_tokens):
        if max_new_tokens < 1:
            raise MoLoRAError("max_new_tokens must be >= 1", "max_new_tokens")
        single, convs = self._conversations(messages)
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
        while (item := queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            tokens.append(item)
            text = self._cut(self.processor.decode(tokens, skip_special_tokens=True), stop)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
                continue
            if len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
        worker.join()
