"""Build or reuse every synthetic corpus: ``build_corpora(root, seed, sizes) -> {name: {split: manifest}}``.

    python -m molora.synthetic.build --sizes tiny --root /tmp/syn      # prints the manifests and timings

Cache layout (root: argument, else ``$MOLORA_SYNTHETIC_DIR``, else ``~/.cache/molora/synthetic``)::

    <root>/speech-<seed>-v1-<tag>/      {train,dev,test}.jsonl  audio/<split>/*.wav        corpus.json
    <root>/documents-<seed>-v1-<tag>/   {train,dev,test}.jsonl  images/<split>/*.png       corpus.json
    <root>/charts-<seed>-v1-<tag>/      ... + test_human.jsonl, test_augmented.jsonl      corpus.json
    <root>/joint-<seed>-v1-<tag>/       images/ audio/ (chat rows: image + spoken question)
    <root>/preferences-<seed>-v1-<tag>/ images/ audio/ (chosen / rejected rows)

``<tag>`` is ``default`` or ``tiny`` for the presets, else a hash of the sizes. A corpus folder
with ``corpus.json`` is complete and is reused without touching any file.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from molora.synthetic import charts, documents, joint, preferences, speech_corpus

__all__ = ["CORPORA", "PRESETS", "build_corpora"]

CORPORA = {m.NAME: m for m in (speech_corpus, documents, charts, joint, preferences)}
PRESETS = {preset: {name: dict(m.SIZES[preset]) for name, m in CORPORA.items()} for preset in ("default", "tiny")}


def _sizes_for(sizes, name: str):
    """``"tiny"`` / ``"default"`` / ``{name: preset or {split: n}}`` (missing names: default)."""
    if isinstance(sizes, str):
        return sizes
    return sizes.get(name, "default")


def build_corpora(root=None, seed: int = 0, sizes: str | dict = "default", *, names=None,
                  workers: int | None = None, force: bool = False, log=None) -> dict[str, dict[str, Path]]:
    """Build (or reuse) the synthetic corpora; returns ``{name: {split: manifest path}}``.

    ``sizes``: ``"default"`` (3,000 training clips, 1,500 documents and 1,500 charts with two
    questions each, 1,000 joint items, 900 preference pairs), ``"tiny"`` (a handful each, for
    tests), or ``{name: "tiny" | {split: n}}``. ``names`` restricts to some of
    ``speech, documents, charts, joint, preferences``. ``workers``: processes (default: all cores).
    """
    names = list(CORPORA) if names is None else list(names)
    unknown = [n for n in names if n not in CORPORA]
    if unknown:
        raise ValueError(f"unknown corpora {unknown}; choose from {list(CORPORA)}")
    return {name: CORPORA[name].build(root, seed, _sizes_for(sizes, name), workers=workers, force=force, log=log)
            for name in names}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="cache root (default: $MOLORA_SYNTHETIC_DIR or ~/.cache/molora/synthetic)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="default", choices=sorted(PRESETS))
    ap.add_argument("--names", nargs="*", default=None, help=f"subset of {list(CORPORA)}")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = build_corpora(args.root, args.seed, args.sizes, names=args.names, workers=args.workers,
                        force=args.force, log=print)
    for name, manifests in out.items():
        info = json.loads((next(iter(manifests.values())).parent / "corpus.json").read_text())
        timing = {k: info[k] for k in ("seconds_per_item", "seconds_per_image") if k in info}
        print(f"{name:12s} {next(iter(manifests.values())).parent}  counts={info['counts']}  "
              f"built in {info['build_seconds']} s {timing}")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
