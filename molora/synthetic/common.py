"""Shared plumbing for the synthetic corpora: cache directories, atomic builds, per-item seeds,
parallel item generation, deterministic media and manifest writers.

Every corpus lives in ``<root>/<name>-<seed>-<version>-<size tag>/`` (root: the ``root``
argument, else ``$MOLORA_SYNTHETIC_DIR``, else ``~/.cache/molora/synthetic``). It is built in a
sibling ``*.partial-<pid>`` folder and renamed into place when complete, with ``corpus.json``
(what was built, counts, build time, library versions) written last; a folder that has
``corpus.json`` is reused as is, so a second build touches no file. Each item draws from its
own ``random.Random`` seeded by (corpus, seed, split, index), so items do not depend on the
order or the process in which they are made.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["default_root", "corpus_dir", "size_tag", "resolve_sizes", "item_rng", "build_corpus", "parallel_map",
           "write_wav", "write_png", "write_jsonl", "read_jsonl", "CorpusInfo"]

ENV_ROOT = "MOLORA_SYNTHETIC_DIR"
META = "corpus.json"
SAMPLING_RATE = 16000


def default_root() -> Path:
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "molora" / "synthetic"


def size_tag(sizes: dict | str, preset: str | None = None) -> str:
    """``tiny`` / ``default`` for presets, else a short hash of the sizes."""
    if preset:
        return preset
    blob = json.dumps(sizes, sort_keys=True).encode()
    return "s" + hashlib.sha1(blob).hexdigest()[:8]


def resolve_sizes(sizes: dict | str, presets: dict[str, dict]) -> tuple[str, dict]:
    """``"tiny"`` / ``"default"`` / ``{split: n}`` -> (size tag, ``{split: n}``)."""
    if isinstance(sizes, str):
        if sizes not in presets:
            raise ValueError(f"unknown size preset {sizes!r}; choose from {sorted(presets)} or pass {{split: n}}")
        return sizes, dict(presets[sizes])
    sizes = {str(k): int(v) for k, v in sizes.items()}
    for name, preset in presets.items():
        if preset == sizes:
            return name, sizes
    return size_tag(sizes), sizes


def corpus_dir(root: str | os.PathLike | None, name: str, seed: int, version: str, tag: str) -> Path:
    """``<root>/<name>-<seed>-<version>-<tag>`` (root: argument, ``$MOLORA_SYNTHETIC_DIR``, ``~/.cache/...``)."""
    base = Path(root).expanduser() if root is not None else default_root()
    return base / f"{name}-{seed}-{version}-{tag}"


def item_rng(name: str, seed: int, split: str, index: int, salt: str = "") -> random.Random:
    """The generator of one item (str seeds hash with SHA-512: stable across processes and runs)."""
    return random.Random(f"molora/{name}/{seed}/{split}/{index}/{salt}")


class CorpusInfo(dict):
    """``corpus.json`` contents: name, seed, version, sizes, manifests {split: relative path}, counts, seconds."""

    def manifests(self, directory: Path) -> dict[str, Path]:
        return {split: directory / rel for split, rel in self["manifests"].items()}


def build_corpus(name: str, seed: int, version: str, tag: str, root, sizes: dict,
                 builder: Callable[[Path], dict[str, Any]], *, force: bool = False,
                 log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Reuse ``<root>/<name>-<seed>-<version>-<tag>`` or build it with ``builder(tmpdir)``.

    ``builder`` writes everything under the folder it is given and returns
    ``{"manifests": {split: relative path}, "counts": {...}, ...}``. Returns absolute manifest paths.
    """
    final = corpus_dir(root, name, seed, version, tag)
    base, leaf = final.parent, final.name
    meta = final / META
    if meta.is_file() and not force:
        info = CorpusInfo(json.loads(meta.read_text()))
        paths = info.manifests(final)
        if all(p.is_file() for p in paths.values()):
            return paths
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob(f"{leaf}.partial-*"):  # left by a process that died mid-build
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = base / f"{leaf}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        result = builder(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    info = {"name": name, "seed": seed, "version": version, "tag": tag, "sizes": sizes,
            "build_seconds": round(seconds, 2), "versions": _library_versions(), **result}
    (tmp / META).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if final.exists() and (force or not meta.is_file()):
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError:
        if not meta.is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: keep its copy
        return CorpusInfo(json.loads(meta.read_text())).manifests(final)
    if log:
        log(f"built {leaf} in {seconds:.1f} s ({result.get('counts')})")
    return CorpusInfo(info).manifests(final)


def _alive(pid: str) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _library_versions() -> dict[str, str]:
    import PIL

    out = {"python": sys.version.split()[0], "numpy": np.__version__, "pillow": PIL.__version__}
    try:
        from importlib.metadata import version

        out["espeakng_loader"] = version("espeakng-loader")
        out["soxr"] = version("soxr")
    except Exception:  # noqa: BLE001 - informational only
        pass
    return out


# ----------------------------------------------------------------------------------------
# parallel item generation
# ----------------------------------------------------------------------------------------
def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _run_chunk(args):
    fn, items = args
    return [fn(*item) for item in items]


def parallel_map(fn: Callable, items: Iterable[tuple], workers: int | None = None,
                 min_parallel: int = 32) -> list:
    """``[fn(*item) for item in items]``, over processes when there are enough items.

    Results come back in item order, and every item seeds itself, so the output does not depend
    on ``workers``. Uses the ``fork`` start method where available (workers only run Pillow,
    espeak-ng, soxr and soundfile, never torch)."""
    items = list(items)
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(items) < min_parallel:
        return [fn(*item) for item in items]
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    n_chunks = workers * 4
    size = -(-len(items) // n_chunks)
    chunks = [(fn, items[i:i + size]) for i in range(0, len(items), size)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        out = []
        for part in ex.map(_run_chunk, chunks):
            out.extend(part)
    return out


# ----------------------------------------------------------------------------------------
# writers (byte-identical output for identical input)
# ----------------------------------------------------------------------------------------
def write_wav(path: Path, audio: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> float:
    """16-bit PCM WAV; returns the duration in seconds."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(np.asarray(audio, np.float32) * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(str(path), pcm, sampling_rate, subtype="PCM_16", format="WAV")
    return round(len(pcm) / sampling_rate, 4)


def write_png(path: Path, image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False, compress_level=6)


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
