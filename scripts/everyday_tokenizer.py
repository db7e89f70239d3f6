"""Learn the everyday tokenizer on its own (the one ``pretrain_tiny.py --corpus everyday`` learns also takes the
quickstart corpora's text) and print tokens per word on the held-out everyday sentences, for choosing its size.

    .venv/bin/python scripts/everyday_tokenizer.py --vocab-size 6144 [--vocab-size 4096 ...] [--out DIR]

Writes ``DIR/tokenizer-<size>.json`` (default DIR: benchmarks/out/everyday-tokenizer) in the layout of
``molora/weights/tiny/tokenizer.json`` (bytes, the special tokens at 256.., then the merges).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, action="append", help="repeatable (default 6144)")
    ap.add_argument("--sentences", type=int, default=100_000, help="generated sentences to learn from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "everyday-tokenizer"))
    args = ap.parse_args(argv)

    from bench_everyday_asr import sentences, tokens_per_word

    from molora.synthetic.everyday_corpus import tokenizer_texts
    from molora.tokenizer import load_tiny_tokenizer, train_bpe_tokenizer

    held = sentences()
    print(f"shipped tiny tokenizer ({len(load_tiny_tokenizer())} tokens): "
          f"{tokens_per_word(load_tiny_tokenizer(), held):.3f} tokens per word")
    texts = tokenizer_texts(args.sentences, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for size in args.vocab_size or [6144]:
        tok = train_bpe_tokenizer(texts, size)
        path = out / f"tokenizer-{size}.json"
        tok.backend_tokenizer.save(str(path))
        print(f"{path}: {tokens_per_word(tok, held):.3f} tokens per word")
    return 0


if __name__ == "__main__":
    sys.exit(main())
