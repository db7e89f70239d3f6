"""The everyday-English generator (molora/synthetic/everyday*.py) and its hand-written held-out set."""
from pathlib import Path

import pytest

from molora.eval import normalize_english
from molora.synthetic.everyday import everyday_sentences

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = ROOT / "benchmarks" / "data" / "everyday_heldout.txt"
WINDOW = 6


def _held_out() -> list[str]:
    return [line.strip() for line in HELD_OUT.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sample() -> list[list[str]]:
    """A large sample of the training stream (the corpus's train split and the tokenizer's text), normalised."""
    from molora.synthetic.everyday_corpus import SPLIT_SEEDS

    return [normalize_english(s).split() for s in everyday_sentences(20000, seed=SPLIT_SEEDS["train"])]


def test_held_out_set_is_large_and_distinct():
    held = _held_out()
    assert len(held) >= 120
    assert len({normalize_english(s) for s in held}) == len(held), "duplicate held-out sentences"


def test_no_held_out_sentence_or_window_in_the_generator_output(sample):
    sentences = {" ".join(ws) for ws in sample}
    windows = {tuple(ws[i:i + WINDOW]) for ws in sample for i in range(len(ws) - WINDOW + 1)}
    leaked = []
    for s in _held_out():
        ws = normalize_english(s).split()
        if " ".join(ws) in sentences:
            leaked.append((s, "whole sentence"))
        leaked += [(s, " ".join(ws[i:i + WINDOW])) for i in range(len(ws) - WINDOW + 1)
                   if tuple(ws[i:i + WINDOW]) in windows]
    assert not leaked, f"held-out text produced by the generator: {leaked[:5]}"


def test_generator_vocabulary_covers_the_held_out_words(sample):
    vocab = {w for ws in sample for w in ws}
    words = [w for s in _held_out() for w in normalize_english(s).split()]
    covered = sum(w in vocab for w in words) / len(words)
    assert covered >= 0.95, f"{covered:.3f} of the held-out words; missing: {sorted({w for w in words if w not in vocab})}"


def test_sentences_are_deterministic_per_seed_and_written_as_text():
    a = everyday_sentences(200, seed=5)
    assert a == everyday_sentences(200, seed=5)
    assert a[:50] == everyday_sentences(50, seed=5)
    assert a != everyday_sentences(200, seed=6)
    assert len(set(a)) > 190
    for s in a:
        assert s[0].isupper() or s[0].isdigit(), s
        assert s[-1] in ".?!", s
        assert 4 <= len(s.split()) <= 30, s
    assert len({w for s in a for w in normalize_english(s).split()}) > 600  # a broad vocabulary, not a closed one


def test_everyday_tokenizer_keeps_the_special_token_ids():
    from molora.presets import TINY_SPECIAL_TOKENS
    from molora.synthetic.everyday_corpus import frequency_text
    from molora.tokenizer import build_byte_tokenizer, train_bpe_tokenizer

    texts = everyday_sentences(2000, seed=0) + frequency_text(20000, top=2000)
    tok = train_bpe_tokenizer(texts, vocab_size=2048, individual_digits=False)
    byte = build_byte_tokenizer()
    assert len(tok) == 2048
    assert tok.convert_tokens_to_ids(TINY_SPECIAL_TOKENS) == byte.convert_tokens_to_ids(TINY_SPECIAL_TOKENS)
    held = _held_out()
    for s in held[:20]:
        assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s
    words = sum(len(s.split()) for s in held)
    tokens = sum(len(tok(s, add_special_tokens=False)["input_ids"]) for s in held)
    assert tokens / words < 1.8  # a small tokenizer already; the shipped (closed-vocabulary) one needs ~2.6


def test_speech_corpus_writes_clips_at_several_sample_rates(tmp_path):
    import soundfile as sf

    from molora.data.manifest import read_manifest
    from molora.synthetic import everyday_corpus

    paths = everyday_corpus.build(tmp_path, seed=0, sizes={"train": 6, "dev": 2}, workers=1)
    rows = [r for split in ("train", "dev") for r in everyday_corpus.read_jsonl(paths[split])]
    assert len(rows) == 8
    for r in rows:
        info = sf.info(str(paths["train"].parent / r["audio"]))
        assert info.samplerate == r["sampling_rate"] in everyday_corpus.SAMPLE_RATES
        assert abs(info.duration - r["duration"]) < 1e-3 and r["duration"] > 0.5
        assert r["voice"].split("+")[0] in everyday_corpus.VOICES
    assert {s.messages[-1]["content"] for s in read_manifest(paths["train"])} == \
        {r["text"] for r in everyday_corpus.read_jsonl(paths["train"])}
    again = everyday_corpus.build(tmp_path / "again", seed=0, sizes={"train": 6, "dev": 2}, workers=1)
    assert again["train"].read_text() == paths["train"].read_text()  # the same rows (audio paths relative)


@pytest.mark.slow
def test_pretrain_script_everyday_smoke(tmp_path):
    """scripts/pretrain_tiny.py --corpus everyday: the everyday corpus and a larger tokenizer end to end (smoke
    sizes); a second run continues from the first with its tokenizer (as the recipe's runs 2-4 do)."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    from molora.presets import TINY_SPECIAL_TOKENS
    from molora.tokenizer import load_tiny_tokenizer

    script, first, second = ROOT / "scripts" / "pretrain_tiny.py", tmp_path / "1", tmp_path / "2"
    common = ["--smoke", "--corpora-root", str(tmp_path / "syn"), "--corpus", "everyday"]
    r = subprocess.run([sys.executable, str(script), "--out", str(first), "--phases", "lm,ctc,speech",
                        "--vocab-size", "1536", *common], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((first / "pretrain.json").read_text())
    assert (info["corpus"], info["vocab_size"]) == ("everyday", 1536)
    tok = load_tiny_tokenizer(first / "tokenizer.json")
    assert len(tok) == 1536 and tok.convert_tokens_to_ids(TINY_SPECIAL_TOKENS) == list(range(256, 264))
    sd = load_file(str(first / "model.safetensors"))
    assert sd["language_model.embed_tokens.weight"].shape[0] == 1536
    r = subprocess.run([sys.executable, str(script), "--out", str(second), "--phases", "mixed",
                        "--tokenizer", str(first / "tokenizer.json"), "--start-from", str(first / "model.safetensors"),
                        *common], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (second / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    assert json.loads((second / "pretrain.json").read_text())["vocab_size"] == 1536


def test_pretrain_script_full_plan_has_every_smoke_key():
    """The full-size plan names every setting the smoke plan does (a key only in SMOKE fails the real run
    after the corpora are built: the first everyday run stopped on KeyError 'everyday_text')."""
    from molora.pretraining import FULL, SMOKE

    assert set(FULL) == set(SMOKE), set(FULL) ^ set(SMOKE)
