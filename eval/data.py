"""Evaluation items from the sources the runners accept: Hugging Face datasets (hub id, a
``save_to_disk`` directory, parquet/JSON files) and JSONL manifests.

An ``Item`` is one question or clip: a unique ``key`` (resume is keyed on it), the text
prompt, a ``load()`` that decodes its medium (called outside the timer: dataset decoding is
not inference), ``meta`` that goes into the result row, a ``length`` used for sorting
(audio seconds), and where it comes from: ``source`` (``file:line`` / ``dataset:index``) and
``media`` (the media file, when there is one), which name it in errors and skip lists. Nothing
is decoded while items are listed; map-style datasets are read by index when a batch needs
them, so a whole test set is never held in memory. A row whose values are unusable (a
non-string transcript, answers that are not strings) is skipped and listed like bad media.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from molora.errors import MoLoRAError

__all__ = ["Item", "load_rows", "dataset_items", "manifest_rows", "unique_key", "SourceError", "OUTSIDE_ROOT_HINT",
           "row_name"]

# how `molora eval` lets manifest media live outside the manifest's folder (the quickstart's caches do)
OUTSIDE_ROOT_HINT = "add --allow-outside-root to the molora eval command to permit this"


class SourceError(MoLoRAError):
    """An evaluation source cannot be read (unreachable hub set, missing file, missing column)."""


@dataclass
class Item:
    key: str
    prompt: str
    kind: str                       # "audio" | "image"
    load: Callable[[], Any]         # -> (samples, sampling_rate) | PIL image
    meta: dict = field(default_factory=dict)
    length: float = 0.0
    source: str = ""                # "file:line" or "dataset:index"
    media: str = ""                 # the media file, when the medium is one


def unique_key(key: Any, seen: dict[str, int]) -> str:
    """``str(key)``, suffixed ``#2``, ``#3``... when a source repeats an id (resume needs unique keys)."""
    k = str(key)
    n = seen.get(k, 0) + 1
    seen[k] = n
    return k if n == 1 else f"{k}#{n}"


# ----------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------
def load_rows(name_or_path: str, *, split: str, config: str | None, media_column: str,
              limit: int | None = None, hint: str | None = None):
    """A dataset (hub id or local) with its media column left encoded.

    Returns ``(rows, name)`` where ``rows`` supports ``len`` and ``rows[i] -> dict`` (a map-style
    ``datasets.Dataset``, or a list of the first ``limit`` rows of a hub dataset, streamed so
    that ``--limit`` does not download the whole set). ``hint`` is appended to the error raised
    when the source cannot be loaded (what to download, which flag to point at it).
    """
    from molora.data.hf_datasets import _load, _no_decode

    local = Path(name_or_path).expanduser().exists()
    streaming = limit is not None and not local
    try:
        ds = _load(str(name_or_path), split, config, streaming, media_column)
        ds = _no_decode(ds, media_column)
        if streaming:
            rows = []
            for row in ds:
                if len(rows) >= limit:
                    break
                rows.append(row)
        else:
            rows = ds if limit is None or limit >= len(ds) else ds.select(range(limit))
    except MoLoRAError as e:
        cause = e.__cause__
        if hint and cause is not None:  # our own advice replaces the generic one
            raise SourceError(f"cannot load the dataset (split {split!r}, config {config!r}): "
                              f"{type(cause).__name__}: {cause}. {hint}", str(name_or_path)) from e
        raise SourceError(e.reason + (f". {hint}" if hint else ""), e.item or str(name_or_path)) from e
    except Exception as e:  # noqa: BLE001 - hub unreachable while streaming, corrupt files ...
        raise SourceError(f"cannot read the dataset (split {split!r}, config {config!r}): {type(e).__name__}: {e}"
                          + (f". {hint}" if hint else ""), str(name_or_path)) from e
    return rows, str(name_or_path)


def column_names(rows) -> list[str]:
    names = getattr(rows, "column_names", None)
    if names is not None:
        return list(names)
    return sorted(rows[0]) if len(rows) else []


def first_column(names, candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in names), None)


def dataset_items(rows, name: str, *, media: str, media_column: str,
                  make: Callable[[dict, int], dict | None], skips=None) -> list[Item]:
    """Items over ``rows`` (see ``load_rows``). ``make(row, index)`` returns the item's fields
    (``key``, ``prompt``, ``meta``; or None to leave the row out); media are decoded lazily by index,
    relative media paths against the source's folder (``data_folder``). A ``MoLoRAError`` from ``make``
    (a bad value in that row) goes to ``skips`` (a ``SkipList``) when given. Rows are named
    ``NAME row N``, N counted from 1 (as manifest lines are)."""
    from molora.data.hf_datasets import data_folder, decode_audio_value, decode_image_value, rebased

    names = column_names(rows)
    if len(rows) and media_column not in names:
        raise SourceError(f"no {media} column {media_column!r}; the dataset has columns {names}", name)
    base = data_folder(name)
    media_free = [c for c in names if c != media_column]
    # the light columns in one sequential pass (no media bytes read)
    light = rows.select_columns(media_free) if hasattr(rows, "select_columns") else \
        ({k: v for k, v in r.items() if k != media_column} for r in rows)
    items = []
    for i, row in enumerate(light):
        where = row_name(name, i)
        try:
            fields = make(row, i)
        except MoLoRAError as e:
            if skips is None:
                raise
            skips.add(where, "", e)
            continue
        if fields is None:
            continue

        def load(i=i, where=where):
            full = rows[i]
            value = rebased(full[media_column], base)
            if media == "audio":
                return decode_audio_value(value, where, full)
            return decode_image_value(value, where)

        items.append(Item(fields["key"], fields["prompt"], media, load, fields.get("meta", {}),
                          fields.get("length", 0.0), source=where))
    return items


def row_name(name: str, index: int) -> str:
    """How messages name row ``index`` (0-based) of a dataset: ``NAME row N`` with N counted from 1."""
    return f"{name} row {index + 1}"


def encoded_audio_seconds(value: Any) -> float:
    """Duration from an encoded audio value's header (no decoding), 0.0 when unknown."""
    import soundfile as sf

    try:
        if isinstance(value, dict) and value.get("bytes") is not None:
            return float(sf.info(io.BytesIO(value["bytes"])).duration)
        if isinstance(value, dict) and value.get("array") is not None:
            return len(value["array"]) / float(value["sampling_rate"])
        path = value.get("path") if isinstance(value, dict) else value
        if isinstance(path, (str, os.PathLike)) and Path(path).exists():
            return float(sf.info(str(path)).duration)
    except Exception:  # noqa: BLE001 - unreadable header: decoded (and reported) later
        pass
    return 0.0


# ----------------------------------------------------------------------------------------
# manifests
# ----------------------------------------------------------------------------------------
def manifest_rows(path: str | os.PathLike, allow_outside_root: bool = False, skips=None) -> list[tuple[Any, dict]]:
    """``[(Sample, raw_row)]`` of a JSONL manifest: ``read_manifest_rows`` validates every line (errors
    name ``file:line``) and resolves media paths against the manifest's folder (inside it unless
    ``allow_outside_root``); the raw row gives the fields a Sample does not keep (``id``, ``duration``,
    ``type``...). Rows the reader leaves out (a media path that never names a file, a line too long to
    read) go to ``skips`` (a ``SkipList``; None: they raise)."""
    from molora.data.manifest import read_manifest_rows
    from molora.errors import MediaError

    lost: list[dict] | None = None if skips is None else []
    pairs = read_manifest_rows(path, allow_outside_root=allow_outside_root, outside_root_hint=OUTSIDE_ROOT_HINT,
                               skipped=lost)
    for e in lost or []:
        skips.add(e["source"], e["item"], (MediaError if e["item"] != "line" else SourceError)(e["reason"]))
    return pairs


def media_of(sample, kind: str):
    """The (absolute) media path of a manifest sample's first ``kind`` part."""
    for part in sample.messages[0]["content"]:
        if isinstance(part, dict) and part.get("type") == kind:
            return part[kind]
    raise SourceError(f"row has no {kind}", sample.source)
