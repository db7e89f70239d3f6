"""The embedded tokenizers, built with `tokenizers` (nothing to download).

- ``bytes`` (the ``small`` preset): ids 0..255 are the raw bytes (GPT-2's byte-to-unicode alphabet,
  no merges), followed by the Phi-4-multimodal special tokens (chat roles, `<|end|>`, the image /
  audio placeholders).
- ``tiny-bpe`` (the ``tiny`` preset): the same ids plus byte-level BPE merges learned from the
  synthetic corpora by ``scripts/pretrain_tiny.py`` (a word of the closed vocabulary is one token,
  digits stay single), shipped as ``molora/weights/tiny/tokenizer.json`` -- a subword tokenizer like
  the real model's, at tiny scale.

Real presets use the checkpoint's own tokenizer through `transformers.AutoTokenizer`.
"""
from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .presets import TINY_BPE_VOCAB, TINY_SPECIAL_TOKENS, TINY_VOCAB


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


# -- the tiny preset's subword tokenizer -------------------------------------------------------------------

TINY_BPE_FILE = "tokenizer.json"  # in molora/weights/tiny/, written by scripts/pretrain_tiny.py


def _bpe_pre_tokenizer(individual_digits: bool = True):
    # digits one by one (numbers are read digit by digit from images) or a run of digits as one piece
    # (BPE then learns frequent numbers), then GPT-2's byte-level split
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=individual_digits),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def _fast(tk: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        unk_token=None, additional_special_tokens=[t for t in TINY_SPECIAL_TOKENS if t != "<|endoftext|>"])


def train_bpe_tokenizer(texts, vocab_size: int = TINY_BPE_VOCAB, individual_digits: bool = True) \
        -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer learned from ``texts`` with the byte tokenizer's id layout kept:
    ids 0..255 are the bytes, 256.. the special tokens (so every id the chat template and the
    placeholders use is the same as the byte tokenizer's), then the learned merges up to ``vocab_size``.
    Any text still encodes (bytes are the fallback). Deterministic for the same texts. ``individual_digits``:
    every digit its own piece (the shipped tokenizer), else runs of digits may merge."""
    from tokenizers import trainers

    n_fixed = TINY_VOCAB  # bytes + special + reserved rows
    probe = Tokenizer(models.BPE())
    probe.pre_tokenizer = _bpe_pre_tokenizer(individual_digits)
    trainer = trainers.BpeTrainer(vocab_size=256 + vocab_size - n_fixed, initial_alphabet=_byte_alphabet(),
                                  special_tokens=[], show_progress=False, min_frequency=2)
    probe.train_from_iterator(list(texts), trainer)
    learned = json.loads(probe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    special = TINY_SPECIAL_TOKENS + [f"<|reserved_{i}|>" for i in range(256 + len(TINY_SPECIAL_TOKENS), n_fixed)]
    for i, tok in enumerate(special):
        vocab[tok] = 256 + i
    for a, b in merges:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(a + b, len(vocab))
    merges = [(a, b) for a, b in merges if a + b in vocab]
    for i in range(len(vocab), vocab_size):  # fewer merges than rows: pad with reserved tokens
        vocab[f"<|reserved_{i}|>"] = i
        special.append(f"<|reserved_{i}|>")
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = _bpe_pre_tokenizer(individual_digits)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(special)
    return _fast(tk)


def shipped_tokenizer_path():
    from pathlib import Path

    return Path(__file__).resolve().parent / "weights" / "tiny" / TINY_BPE_FILE


def load_tiny_tokenizer(path=None) -> PreTrainedTokenizerFast:
    """The tiny preset's shipped BPE tokenizer (``molora/weights/tiny/tokenizer.json``)."""
    from .errors import MoLoRAError

    f = path or shipped_tokenizer_path()
    if not f.exists():
        raise MoLoRAError("the tiny preset's tokenizer is missing; rebuild it with scripts/pretrain_tiny.py", str(f))
    return _fast(Tokenizer.from_file(str(f)))
