"""Hugging Face datasets -> ``Sample`` objects (ASR and VQA layouts), with media decoded in memory.

``read_hf_dataset(name_or_path, split=..., kind="asr" | "vqa")`` accepts

* a hub id (``"openslr/librispeech_asr"``, with ``config=``): ``datasets.load_dataset``, streamed
  by default;
* a local directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
  (``datasets.load_from_disk``);
* an AudioFolder / ImageFolder directory (media files + ``metadata.csv`` / ``metadata.jsonl`` whose
  ``file_name`` column names them): the metadata as a table, ``file_name`` as the media column;
* local data files (``.parquet``, ``.json``/``.jsonl``, ``.csv``, ``.arrow``) or a directory of
  them: ``load_dataset`` with the matching builder. Relative media paths in them resolve against the
  file's folder (the folder, for a directory), as a manifest's do, never against the working folder.

Supported column layouts (the first column found wins):

* ASR: audio in ``audio_column`` (default ``"audio"``): an ``Audio`` feature (encoded bytes or a
  path; decoded here with soundfile, so torchcodec is *not* needed), a ``{"array",
  "sampling_rate"}`` dict, an ``AudioDecoder``-like object (``get_all_samples()``), or a raw
  sample array with a ``sampling_rate`` column. Transcript in ``text_column`` or
  ``sentence`` / ``transcription`` / ``normalized_text`` / ``transcript``.
* VQA (DocVQA, ChartQA): image in ``image_column`` (an ``Image`` feature, a PIL image, or
  bytes/path), question in ``question_column`` or ``query``, answers in ``answers_column`` or
  ``label`` / ``answer`` (a single string becomes ``[answer]``).

Media that cannot be decoded does not stop the stream: the sample keeps the encoded value
(``{"bytes", "path"}``) and the collator reports it as a skip, like a missing manifest file.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from molora.errors import AudioError, ImageError, MediaError, MoLoRAError

from ..prompts import ASR_PROMPT, VQA_SUFFIX
from .manifest import Sample, estimate_length

__all__ = ["read_hf_dataset", "decode_audio_value", "decode_image_value", "data_folder", "rebased",
           "TEXT_FALLBACKS", "QUESTION_FALLBACKS", "ANSWERS_FALLBACKS"]

TEXT_FALLBACKS = ("text", "sentence", "transcription", "normalized_text", "transcript")
QUESTION_FALLBACKS = ("question", "query")
ANSWERS_FALLBACKS = ("answers", "label", "answer")
_RATE_COLUMNS = ("sampling_rate", "sample_rate", "sr")
_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


# ----------------------------------------------------------------------------------------
# media decoding (shared with the collator; does not import `datasets`)
# ----------------------------------------------------------------------------------------
def _mono(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:  # soundfile: [T, C]
        data = data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(data, dtype=np.float32)


def _read_bytes(path: str) -> bytes:
    from datasets.utils.file_utils import xopen  # remote (hf://, https://) paths in streamed data

    with xopen(path, "rb") as f:
        return f.read()


def _decode_audio_bytes(data: bytes, item: str) -> tuple[np.ndarray, int]:
    try:
        import soundfile as sf

        arr, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as first:  # noqa: BLE001
        try:  # torchcodec, when installed, reads what libsndfile cannot (m4a, ...)
            from torchcodec.decoders import AudioDecoder

            s = AudioDecoder(data).get_all_samples()
            return _mono(s.data.numpy().T), int(s.sample_rate)
        except Exception:  # noqa: BLE001
            raise AudioError(f"cannot decode audio bytes ({first})", item) from None
    if arr.shape[0] == 0:
        raise AudioError("audio holds no samples", item)
    return _mono(arr), int(sr)


def decode_audio_value(value: Any, item: str, row: dict | None = None) -> tuple[np.ndarray, int]:
    """Any supported in-memory audio value -> ``(float32 mono samples, sampling_rate)``, or AudioError."""
    from molora.encoders.audio_features import load_audio

    if isinstance(value, (str, os.PathLike)):
        return load_audio(value)
    if isinstance(value, tuple) and len(value) == 2:
        return value
    if hasattr(value, "get_all_samples"):  # torchcodec AudioDecoder (datasets >= 4 with torchcodec)
        try:
            s = value.get_all_samples()
        except Exception as e:  # noqa: BLE001
            raise AudioError(f"cannot decode audio ({e})", item) from None
        return _mono(s.data.cpu().numpy().T), int(s.sample_rate)
    if isinstance(value, dict):
        if value.get("array") is not None:
            sr = value.get("sampling_rate") or _row_rate(row)
            if sr is None:
                raise AudioError("decoded audio has no 'sampling_rate'", item)
            return _mono(value["array"]), int(sr)
        if value.get("bytes") is not None:
            return _decode_audio_bytes(value["bytes"], item)
        path = value.get("path")
        if path:
            if Path(path).exists():
                return load_audio(path)
            if "://" in path:
                try:
                    return _decode_audio_bytes(_read_bytes(path), item)
                except MediaError:
                    raise
                except Exception as e:  # noqa: BLE001
                    raise AudioError(f"cannot read {path} ({e})", item) from None
            raise AudioError(f"file not found: {path}", item)
        raise AudioError("audio value has neither 'array', 'bytes' nor 'path'", item)
    if isinstance(value, (list, np.ndarray)):
        sr = _row_rate(row)
        if sr is None:
            raise AudioError("raw audio samples need a sampling-rate column "
                             f"(one of {_RATE_COLUMNS})", item)
        return _mono(value), int(sr)
    if value is None:
        raise AudioError("no audio (null value)", item)
    raise AudioError(f"unsupported audio value of type {type(value).__name__}", item)


def _row_rate(row: dict | None):
    if row:
        for c in _RATE_COLUMNS:
            if row.get(c) is not None:
                return row[c]
    return None


def decode_image_value(value: Any, item: str):
    """Any supported in-memory image value -> RGB PIL image, or ImageError."""
    from PIL import Image, UnidentifiedImageError

    from molora.encoders.image_transform import load_image

    if isinstance(value, (str, os.PathLike, Image.Image)):
        return load_image(value, item=item if not isinstance(value, (str, os.PathLike)) else None)
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None and value.get("path"):
            path = value["path"]
            if Path(path).exists() or "://" not in path:
                return load_image(path)
            try:
                data = _read_bytes(path)
            except Exception as e:  # noqa: BLE001
                raise ImageError(f"cannot read {path} ({e})", item) from None
        if data is None:
            raise ImageError("image value has neither 'bytes' nor 'path'", item)
        try:
            img = Image.open(io.BytesIO(data))  # lazy: load_image checks the size before decoding
        except (UnidentifiedImageError, OSError) as e:
            raise ImageError(f"not a readable image (corrupt data or unknown format: {e})", item) from None
        except Image.DecompressionBombError as e:
            raise ImageError(f"too many pixels (decompression bomb guard: {e})", item) from None
        return load_image(img, item=item)
    if value is None:
        raise ImageError("no image (null value)", item)
    raise ImageError(f"unsupported image value of type {type(value).__name__}", item)


# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------
def data_folder(name: str) -> Path | None:
    """The folder relative media paths of a local source resolve against: a data file's own folder (as a
    manifest's), a data folder itself; None for a hub id."""
    p = Path(name).expanduser()
    if p.is_file():
        return p.resolve().parent
    return p.resolve() if p.is_dir() else None


def rebased(value: Any, base: Path | None) -> Any:
    """A media value whose relative path is made absolute against ``base`` (``data_folder``); anything else
    (bytes, arrays, absolute paths, URLs, hub data) unchanged."""
    if base is None:
        return value
    path = value.get("path") if isinstance(value, dict) and value.get("bytes") is None else value
    if not isinstance(path, str) or not path.strip() or "://" in path or Path(path).expanduser().is_absolute():
        return value
    full = str(base / path)
    return {**value, "path": full} if isinstance(value, dict) else full


def _offline_error(name: str, split: str, config: str | None, err: Exception) -> MoLoRAError:
    cfg = f", config {config!r}" if config else ""
    return MoLoRAError(
        f"cannot load dataset {name!r} (split {split!r}{cfg}): {type(err).__name__}: {err}. "
        "If the Hugging Face Hub is unreachable, download the dataset where there is network "
        "(e.g. `datasets.load_dataset(...).save_to_disk(DIR)` or `hf download --repo-type dataset "
        f"{name} --local-dir DIR`) and pass the local path instead", name)


def _is_saved_to_disk(p: Path) -> bool:
    return p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists())


_METADATA = ("metadata.csv", "metadata.jsonl")


def _folder_metadata(p: Path) -> Path | None:
    """The ``metadata.csv`` / ``.jsonl`` of an AudioFolder / ImageFolder layout (media files beside a metadata
    file whose ``file_name`` column names them), when ``p`` is one."""
    found = [p / n for n in _METADATA if (p / n).is_file()] if p.is_dir() else []
    return found[0] if len(found) == 1 else None


def _load(name_or_path: str, split: str, config: str | None, streaming: bool, media_column: str | None = None):
    import datasets

    p = Path(name_or_path).expanduser()
    meta = _folder_metadata(p) if media_column else None
    if meta is not None:
        # AudioFolder / ImageFolder: the metadata read as a table, its file names as media paths relative to the
        # folder (decoded here with soundfile / PIL: `datasets` would need torchcodec to build the folder)
        ds = datasets.load_dataset(_BUILDERS[meta.suffix], data_files={split: str(meta.resolve())}, split=split)
        if "file_name" in ds.column_names and media_column not in ds.column_names:
            ds = ds.rename_column("file_name", media_column)
        return ds
    if _is_saved_to_disk(p):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise MoLoRAError(f"split {split!r} not found (available: {sorted(ds)})", str(p))
            ds = ds[split]
        return ds
    if p.is_file():
        builder = _BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise MoLoRAError(f"unsupported data file type {p.suffix!r} (expected one of {sorted(_BUILDERS)})", str(p))
        return datasets.load_dataset(builder, data_files={split: str(p.resolve())}, split=split, streaming=streaming)
    if p.is_dir():
        return datasets.load_dataset(str(p.resolve()), config, split=split, streaming=streaming)
    try:
        return datasets.load_dataset(name_or_path, config, split=split, streaming=streaming)
    except MoLoRAError:
        raise
    except Exception as e:  # noqa: BLE001 - hub unreachable, not found, offline mode ...
        raise _offline_error(name_or_path, split, config, e) from e


def _no_decode(ds, column: str):
    """Ask `datasets` for the encoded bytes/path of an Audio/Image column: we decode ourselves
    (soundfile / PIL), so neither torchcodec nor a corrupt file can stop the stream."""
    import datasets

    feats = getattr(ds, "features", None) or {}
    feat = feats.get(column)
    if isinstance(feat, datasets.Audio) and feat.decode:
        return ds.cast_column(column, datasets.Audio(decode=False))
    if isinstance(feat, datasets.Image) and feat.decode:
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def _pick(row: dict, preferred: str, fallbacks: tuple[str, ...], what: str, source: str) -> Any:
    for c in (preferred, *fallbacks):
        if c in row:
            return row[c]
    raise MoLoRAError(f"no {what} column: tried {[preferred, *fallbacks]}, the row has {sorted(row)}", source)


def _try_decode(decode, value, item: str, *args):
    try:
        return decode(value, item, *args)
    except MediaError:
        return value  # kept encoded: the collator decodes again, fails, and reports the skip


def read_hf_dataset(name_or_path: str | os.PathLike, *, split: str, config: str | None = None, kind: str = "asr",
                    streaming: bool = True, audio_column: str = "audio", text_column: str = "text",
                    image_column: str = "image", question_column: str = "question",
                    answers_column: str = "answers", limit: int | None = None,
                    prompt: str | None = None) -> Iterator[Sample]:
    """Yield ``Sample`` objects (``kind`` "asr" or "vqa") from a hub dataset or a local copy.

    ``source`` of each sample is ``"NAME[SPLIT] row N"`` (N counted from 1, as manifest lines are).
    Raises ``MoLoRAError`` naming the dataset when it cannot be loaded (telling the user to download it
    and pass a local path when the hub is unreachable) and when a row lacks the expected columns or has
    a non-string transcript.
    """
    if kind not in ("asr", "vqa"):
        raise MoLoRAError(f"kind must be 'asr' or 'vqa', got {kind!r}", str(name_or_path))
    name = str(name_or_path)
    ds = _load(name, split, config, streaming, audio_column if kind == "asr" else image_column)
    ds = _no_decode(ds, audio_column if kind == "asr" else image_column)
    base = data_folder(name)    # relative media paths: against the data file's folder, as a manifest's
    it = iter(ds)
    for idx in range(limit if limit is not None else 2 ** 62):
        try:
            row = next(it)
        except StopIteration:
            return
        except MoLoRAError:
            raise
        except Exception as e:  # noqa: BLE001 - streamed data fetched lazily
            if idx == 0 and not Path(name).expanduser().exists():
                raise _offline_error(name, split, config, e) from e
            raise MoLoRAError(f"cannot read row {idx + 1}: {type(e).__name__}: {e}", f"{name}[{split}]") from e
        source = f"{name}[{split}] row {idx + 1}"      # counted from 1, as manifest lines are
        media = audio_column if kind == "asr" else image_column
        if media in row:
            row = {**row, media: rebased(row[media], base)}
        yield (_asr_sample(row, source, audio_column, text_column, prompt) if kind == "asr"
               else _vqa_sample(row, source, image_column, question_column, answers_column))


def _asr_sample(row: dict, source: str, audio_column: str, text_column: str, prompt: str | None) -> Sample:
    if audio_column not in row:
        raise MoLoRAError(f"no audio column {audio_column!r}; the row has {sorted(row)}", source)
    text = _pick(row, text_column, TEXT_FALLBACKS, "transcript", source)
    if not isinstance(text, str) or not text.strip():
        raise MoLoRAError(f"transcript must be a non-empty string, got {text!r}", source)
    audio = _try_decode(decode_audio_value, row[audio_column], f"{source}:{audio_column}", row)
    msgs = [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                         {"type": "text", "text": prompt or ASR_PROMPT}]},
            {"role": "assistant", "content": text}]
    return Sample(msgs, "asr", source, length=estimate_length(msgs))


def _vqa_sample(row: dict, source: str, image_column: str, question_column: str, answers_column: str) -> Sample:
    if image_column not in row:
        raise MoLoRAError(f"no image column {image_column!r}; the row has {sorted(row)}", source)
    question = _pick(row, question_column, QUESTION_FALLBACKS, "question", source)
    answers = _pick(row, answers_column, ANSWERS_FALLBACKS, "answers", source)
    if isinstance(answers, str):
        answers = [answers]
    if (not isinstance(question, str) or not isinstance(answers, (list, tuple)) or not answers
            or not all(isinstance(a, str) for a in answers)):
        raise MoLoRAError(f"expected a string question and a non-empty list of string answers, got "
                          f"{question!r} / {answers!r}", source)
    image = _try_decode(decode_image_value, row[image_column], f"{source}:{image_column}")
    msgs = [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": question + VQA_SUFFIX}]},
            {"role": "assistant", "content": answers[0]}]
    return Sample(msgs, "vqa", source, answers=list(answers), length=estimate_length(msgs))
