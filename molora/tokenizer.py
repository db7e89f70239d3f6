"""The tiny preset's byte-level tokenizer, built with `tokenizers` (nothing to download).

Ids 0..255 are the raw bytes (GPT-2's byte-to-unicode alphabet, no merges), followed by the
Phi-4-multimodal special tokens (chat roles, `<|end|>`, the image / audio placeholders).
Real presets use the checkpoint's own tokenizer through `transformers.AutoTokenizer`.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .presets import TINY_SPECIAL_TOKENS, TINY_VOCAB


def _byte_alphabet() -> list[str]:
    """GPT-2's reversible byte -> printable unicode character table, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    for i, tok in enumerate(TINY_SPECIAL_TOKENS):
        vocab[tok] = 256 + i
    for i in range(256 + len(TINY_SPECIAL_TOKENS), TINY_VOCAB):  # unused padding rows of the embedding
        vocab[f"<|reserved_{i}|>"] = i
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    special = TINY_SPECIAL_TOKENS + [f"<|reserved_{i}|>" for i in range(256 + len(TINY_SPECIAL_TOKENS), TINY_VOCAB)]
    tk.add_special_tokens(special)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=[t for t in TINY_SPECIAL_TOKENS if t != "<|endoftext|>"],
    )
    return fast
