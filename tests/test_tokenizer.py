"""The embedded tokenizers: the byte tokenizer (``small``) and the tiny preset's shipped BPE."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molora import MoLoRAConfig, MoLoRAProcessor
from molora.presets import TINY_BPE_VOCAB, TINY_SPECIAL_TOKENS
from molora.tokenizer import build_byte_tokenizer, load_tiny_tokenizer, shipped_tokenizer_path, train_bpe_tokenizer

TEXTS = ["we hold this old coat today", "six eight zero five five", "What is the value of 2023?",
         "What name is written on the form?", "Carla Smith", "there are seven yellow clocks in the kitchen"] * 20


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(TEXTS, vocab_size=400)


def test_bpe_keeps_the_byte_tokenizer_ids(bpe):
    byte = build_byte_tokenizer()
    assert len(bpe) == 400
    for i, tok in enumerate(TINY_SPECIAL_TOKENS):
        assert bpe.convert_tokens_to_ids(tok) == byte.convert_tokens_to_ids(tok) == 256 + i
    # a lone byte is the same id in both
    for ch in "aZ7 ?\n":
        assert bpe(ch)["input_ids"] == byte(ch)["input_ids"]


def test_bpe_merges_words_and_splits_digits(bpe):
    ids = bpe("we hold this old coat today")["input_ids"]
    assert len(ids) <= 8 < len("we hold this old coat today")
    assert all(i >= 272 for i in ids[:3])  # frequent words are learned merges
    digits = bpe("2023 12368")["input_ids"]
    assert [bpe.decode([i]).strip() for i in digits if bpe.decode([i]).strip()] == list("202312368")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_bpe_round_trips_any_text(text):
    tok = load_tiny_tokenizer()
    assert tok.decode(tok(text)["input_ids"]) == text


def test_special_tokens_are_atomic_in_the_shipped_tokenizer():
    tok = load_tiny_tokenizer()
    ids = tok("<|user|><|endoftext10|><|endoftext11|>hi<|end|>")["input_ids"]
    assert ids[:3] == [258, 261, 262] and ids[-1] == 260


def test_tiny_preset_uses_the_shipped_tokenizer(tmp_path):
    assert shipped_tokenizer_path().exists()
    cfg = MoLoRAConfig.preset("tiny")
    assert cfg.tokenizer == "tiny-bpe" and cfg.backbone.vocab_size == TINY_BPE_VOCAB
    proc = MoLoRAProcessor.from_pretrained("tiny")
    assert len(proc.tokenizer) == TINY_BPE_VOCAB
    proc.save_pretrained(tmp_path)  # a saved checkpoint carries its own copy
    again = MoLoRAProcessor.from_pretrained(str(tmp_path))
    text = "Transcribe the audio clip into text."
    assert again.tokenizer(text)["input_ids"] == proc.tokenizer(text)["input_ids"]


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
    from molora.errors import MoLoRAError

    with pytest.raises(MoLoRAError, match="tokenizer"):
        load_tiny_tokenizer(tmp_path / "tokenizer.json")
