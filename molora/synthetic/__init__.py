"""Deterministic synthetic corpora for the embedded default (offline, seeded, cached on disk).

    from molora.synthetic import build_corpora
    manifests = build_corpora(seed=0, sizes="default")   # {name: {split: Path to JSONL manifest}}

Corpora (each a module with ``build(root, seed, sizes)``): ``speech_corpus`` (espeak-ng ASR
clips), ``documents`` (forms / receipts / tables, DocVQA style), ``charts`` (bar / line / pie,
ChartQA style, human and augmented questions), ``joint`` (spoken questions about drawn pages),
``preferences`` (chosen / rejected pairs for DPO). Building blocks: ``speech.speak`` (espeak-ng,
deterministic), ``sentences`` (closed vocabulary), ``draw`` (a recording Pillow canvas).
"""


def __getattr__(name):  # keep `import molora.synthetic.speech` light
    if name == "build_corpora":
        from molora.synthetic.build import build_corpora

        return build_corpora
    raise AttributeError(name)


__all__ = ["build_corpora"]
