"""The per-row token limit (``data.max_tokens``, by default the model's context), checked before
any tensor is built.

``RowLength(processor, max_tokens)`` answers two questions about a training Sample:

* ``lower_bound(sample)``: tokens the row's text needs at least, from its character count alone
  (no token is longer than the vocabulary's longest entry), so a 30 MB line is refused without
  being tokenised;
* ``count(sample)``: the exact number of tokens the processor will make of the row (chat
  template, text pieces, one placeholder token per image / audio token), computed from the loaded
  media's sizes without building features or tensors. A preference row counts its prompt with the
  longer (in tokens) of its two replies.

``check(sample, loaded)`` raises ``LengthError`` naming the limit; the collator turns that into a
skip listed beside bad media (``--strict`` makes it fatal).
"""
from __future__ import annotations

from molora.errors import LengthError

__all__ = ["RowLength"]


class RowLength:
    def __init__(self, processor, max_tokens: int | None = None):
        self.processor = processor
        context = processor.config.backbone.max_position_embeddings
        self.max_tokens = int(max_tokens) if max_tokens else context
        self.what = "data.max_tokens" + (" (the model's context)" if not max_tokens else "")
        vocab = processor.tokenizer.get_vocab() if processor.tokenizer is not None else {}
        self.longest = max((len(t) for t in vocab), default=1) or 1
        self._fixed: dict[str, int] = {}

    # -- counting ------------------------------------------------------------------------
    def _encode_len(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def _fixed_len(self, text: str) -> int:  # role headers and <|end|>, the same for every row
        if text not in self._fixed:
            self._fixed[text] = self._encode_len(text)
        return self._fixed[text]

    @staticmethod
    def _conversations(sample) -> list[list[dict]]:
        if sample.kind != "preference":
            return [sample.messages]
        return [list(sample.messages) + [{"role": "assistant", "content": reply or ""}]
                for reply in (sample.chosen, sample.rejected)]

    @staticmethod
    def _text_chars(messages: list[dict]) -> int:
        n = 0
        for m in messages:
            content = m.get("content", "")
            if isinstance(content, str):
                n += len(content)
            elif isinstance(content, list):
                n += sum(len(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
        return n

    def lower_bound(self, sample) -> tuple[int, int]:
        """(characters of text, the fewest tokens they can make)."""
        chars = max(self._text_chars(c) for c in self._conversations(sample))
        return chars, chars // self.longest

    def count(self, sample) -> int:
        """Exact token count of the row as the processor will build it (media already loaded)."""
        best = 0
        for conv in self._conversations(sample):
            segments, media = self.processor.render(conv, 0, add_generation_prompt=False)
            counts = {name: [entry.token_count(self.processor.parts[name], v) for v in media[name]]
                      for name, entry in self.processor.modalities.items()}
            used = {name: 0 for name in counts}
            n = 0
            for role, body in segments:
                n += self._fixed_len(f"<|{role}|>")
                if body is None:
                    continue
                last = 0
                for m in self.processor.placeholder.finditer(body):
                    n += self._encode_len(body[last:m.start()])
                    kind = m.group(1)
                    n += counts[kind][used[kind]] if used[kind] < len(counts[kind]) else 0
                    used[kind] += 1
                    last = m.end()
                n += self._encode_len(body[last:]) + self._fixed_len("<|end|>")
            best = max(best, n)
        return best

    # -- the check -------------------------------------------------------------------------
    def check(self, sample, loaded: bool) -> None:
        """Raise LengthError when ``sample`` is over the limit: from its characters alone when
        ``loaded`` is False (before any media is read), exactly when its media are loaded."""
        if not loaded:
            chars, bound = self.lower_bound(sample)
            if bound > self.max_tokens:
                raise LengthError(f"{chars:,} characters of text make at least {bound:,} tokens, over "
                                  f"{self.what}={self.max_tokens:,} (not tokenised)", "row")
            return
        n = self.count(sample)
        if n > self.max_tokens:
            raise LengthError(f"{n:,} tokens exceed {self.what}={self.max_tokens:,}", "row")
