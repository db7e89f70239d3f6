"""Training manifests: JSONL rows -> ``Sample`` objects in the transformers chat format.

One JSON object per line (blank lines are allowed). Media paths are relative to the
manifest's directory (the *data root*); they are resolved to absolute paths here, and a
path that leaves the root (``..``, a symlink, an absolute path elsewhere) is refused unless
``allow_outside_root=True``. Files are *not* opened or checked for existence here: a missing
or corrupt file is a collate-time skip (see ``molora.stages.collate``). A media path that can
never name a file (a symlink loop) is a per-row ``MediaError``: listed in ``skipped`` when the
caller passes that list (the trainer and the evaluators do), like a bad file at collate time.

Row shapes::

    ASR         {"audio": PATH, "text": TRANSCRIPT, "prompt"?: STR, "duration"?: SECONDS}
                NeMo / Open ASR manifests: {"audio_filepath": PATH, "duration": SECONDS, "text": ...}
                (``offset`` 0 only: molora reads whole files)
    chat        {"messages": [...]}                       (media parts hold paths: image, audio,
                                                           any modality's content type)
    VQA         {"image": PATH, "question": Q, "answers": [A, ...]}
    preference  {"messages": [... ending with a user turn], "chosen": STR, "rejected": STR}

Other keys (``"id"``, ...) are ignored. Every error names ``file:line`` and the reason.
"""
from __future__ import annotations

import errno
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from molora.errors import MediaError, MoLoRAError
from molora.modalities import MODALITIES, Modality
from molora.prompts import ASR_PROMPT, VQA_SUFFIX

__all__ = ["Sample", "ManifestError", "read_manifest", "read_manifest_rows", "parse_row", "loads_row",
           "manifest_path", "estimate_length", "KINDS", "MAX_LINE_BYTES", "AUDIO_KEYS"]

KINDS = ("asr", "chat", "vqa", "preference")
AUDIO_KEYS = ("audio", "audio_filepath")    # molora's own key, NeMo / Open ASR manifests' key
_ROLES = ("system", "user", "assistant")

MAX_LINE_BYTES = 16 * 2**20             # a manifest line past this is never read whole (rows hold paths, not media)


class ManifestError(MoLoRAError):
    """A manifest line cannot be used: bad JSON, unknown row shape, wrong types, unsafe path."""


@dataclass
class Sample:
    """One training example. ``messages`` are in the transformers chat format; media parts hold
    absolute paths (manifests) or in-memory PIL images / ``(array, sampling_rate)`` tuples (hub data).
    For ``kind == "preference"`` the messages are the prompt (ending with a user turn) and
    ``chosen`` / ``rejected`` the two assistant replies. ``source`` ("/abs/train.jsonl:12") names
    the sample in every error and skip report. ``length`` is a cheap token-length estimate."""

    messages: list[dict]
    kind: str
    source: str
    chosen: str | None = None
    rejected: str | None = None
    answers: list[str] | None = None
    length: int = 0


# ----------------------------------------------------------------------------------------
# length estimates (never decode media)
# ----------------------------------------------------------------------------------------
def _entries(modalities: Iterable[Modality] | None) -> dict[str, Modality]:
    """Content type -> modality entry: ``modalities`` (a model's: ``config.modality_entries()``), or
    every registered one."""
    return {m.content_type: m for m in (MODALITIES.values() if modalities is None else modalities)}


def estimate_length(messages: list[dict], extra_text: str = "", *, probe_media: bool = False,
                    audio_duration: float | None = None, modalities: Iterable[Modality] | None = None) -> int:
    """Text characters + per-media token estimates (``Modality.estimate_tokens``). ``probe_media``
    reads file headers (soundfile.info / PIL lazy open) for durations and sizes; nothing is decoded.
    ``audio_duration``: an ASR row's stated clip length in seconds."""
    entries = _entries(modalities)
    stated = {"audio": audio_duration}
    n = len(extra_text)
    for msg in messages:
        content = msg.get("content", "")
        if isinstance(content, str):
            n += len(content) + 4
            continue
        n += 4
        for part in content:
            t = part.get("type")
            if t == "text":
                n += len(part.get("text", ""))
            elif t in entries:
                n += entries[t].estimate_tokens(part.get(t), probe_media, stated.get(t))
    return n


# ----------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------
class _Row:
    def __init__(self, where: str, root: Path, allow_outside_root: bool, outside_root_hint: str | None = None,
                 modalities: Iterable[Modality] | None = None):
        self.where, self.root, self.allow = where, root, allow_outside_root
        self.entries = _entries(modalities)
        self.hint = outside_root_hint or "pass allow_outside_root=True to permit this"

    def fail(self, reason: str):
        raise ManifestError(reason, self.where)

    def need(self, kind: str, shape: str) -> None:
        if kind not in self.entries:
            self.fail(f"{shape} rows hold {kind}, which is not among the modalities ({', '.join(self.entries)})")

    def text(self, row: dict, key: str, *, nonempty: bool = True) -> str:
        if key not in row:
            self.fail(f"missing field {key!r}")
        v = row[key]
        if not isinstance(v, str):
            self.fail(f"field {key!r} must be a string, got {type(v).__name__}")
        if nonempty and not v.strip():
            self.fail(f"field {key!r} is empty")
        return v

    def path(self, value: Any, field: str, kind: str) -> str:
        """``value`` resolved against the data root. A NUL character or an unusable path is a ManifestError;
        a path that never names a file (a symlink loop) is a per-row ``MediaError`` of the modality whose
        content type is ``kind`` (``AudioError``, ``ImageError``, ...) whose item is the path, so callers
        can skip and list the row as a bad medium."""
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{field} must be a non-empty path string, got {value!r}")
        if "\x00" in value:
            self.fail(f"{field} {value!r} contains a NUL character (\\x00), which no file name can hold")
        if "://" in value:
            self.fail(f"{field} {value!r} is a URL; manifests take local paths relative to {self.root}")
        p = Path(value).expanduser()
        p = p if p.is_absolute() else self.root / p
        try:
            resolved = p.resolve()  # follows symlinks and '..' (the file need not exist)
        except (RuntimeError, OSError) as e:  # Python 3.11: RuntimeError("Symlink loop from ...")
            error = self.entries[kind].media_error if kind in self.entries else MediaError
            reason = "symlink loop" if isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP else \
                f"cannot resolve the path ({e})"
            raise error(f"{field}: {reason}: the path never names a file", str(p)) from None
        if not self.allow and not resolved.is_relative_to(self.root):
            self.fail(f"{field} {value!r} resolves to {resolved}, outside the data root {self.root} "
                      f"({self.hint})")
        return str(resolved)

    def messages(self, value: Any) -> list[dict]:
        if not isinstance(value, list) or not value:
            self.fail("'messages' must be a non-empty list of {role, content} objects")
        out = []
        for i, msg in enumerate(value):
            at = f"messages[{i}]"
            if not isinstance(msg, dict):
                self.fail(f"{at} must be an object, got {type(msg).__name__}")
            role = msg.get("role")
            if role not in _ROLES:
                self.fail(f"{at}.role must be one of {_ROLES}, got {role!r}")
            if "content" not in msg:
                self.fail(f"{at} has no 'content'")
            content = msg["content"]
            if isinstance(content, str):
                out.append({"role": role, "content": content})
                continue
            if not isinstance(content, list):
                self.fail(f"{at}.content must be a string or a list of parts, got {type(content).__name__}")
            parts = []
            for j, part in enumerate(content):
                pat = f"{at}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        self.fail(f"{pat}.text must be a string")
                    parts.append({"type": "text", "text": part["text"]})
                elif kind in self.entries:
                    raw = next((part[k] for k in (kind, "path", "url") if k in part), None)
                    if raw is None:
                        self.fail(f"{pat} ({kind}) has no {kind!r} path")
                    parts.append({"type": kind, kind: self.path(raw, f"{pat}.{kind}", kind)})
                else:
                    kinds = ", ".join(repr(k) for k in ["text", *self.entries])
                    self.fail(f"{pat}.type must be one of {kinds}, got {kind!r}")
            out.append({"role": role, "content": parts})
        return out


def parse_row(row: Any, where: str, root: Path, *, allow_outside_root: bool = False,
              probe_media: bool = True, outside_root_hint: str | None = None,
              modalities: Iterable[Modality] | None = None) -> Sample:
    """One decoded JSON row -> Sample (``where`` is "file:line", ``root`` the resolved data root;
    ``outside_root_hint`` says how the calling entry point permits media outside the root; chat rows'
    media parts are those of ``modalities``, by default every registered modality)."""
    r = _Row(where, root, allow_outside_root, outside_root_hint, modalities)
    entries = list(r.entries.values())
    if not isinstance(row, dict):
        r.fail(f"a row must be a JSON object, got {type(row).__name__}")
    if "chosen" in row or "rejected" in row:
        if "messages" not in row:
            r.fail("missing field 'messages' (preference rows: messages + chosen + rejected)")
        msgs = r.messages(row["messages"])
        if msgs[-1]["role"] != "user":
            r.fail("preference 'messages' must end with a user turn (the replies are 'chosen' / 'rejected')")
        chosen, rejected = r.text(row, "chosen"), r.text(row, "rejected")
        return Sample(msgs, "preference", where, chosen=chosen, rejected=rejected,
                      length=estimate_length(msgs, max(chosen, rejected, key=len), probe_media=probe_media,
                                             modalities=entries))
    if "messages" in row:
        msgs = r.messages(row["messages"])
        if not any(m["role"] == "assistant" and m["content"] for m in msgs):
            r.fail("chat 'messages' have no non-empty assistant turn (nothing to learn from)")
        return Sample(msgs, "chat", where, length=estimate_length(msgs, probe_media=probe_media, modalities=entries))
    audio_key = [k for k in AUDIO_KEYS if k in row]
    if len(audio_key) > 1:
        r.fail("both 'audio' and 'audio_filepath' (give the clip once)")
    if audio_key and "image" in row:
        r.fail(f"unknown row shape: both {audio_key[0]!r} and 'image' (use a chat row with 'messages' for mixed "
               "media)")
    if audio_key:
        r.need("audio", "ASR")
        audio = r.path(row[audio_key[0]], audio_key[0], "audio")
        text = r.text(row, "text")
        prompt = r.text(row, "prompt") if "prompt" in row else ASR_PROMPT
        duration = row.get("duration")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                     or not math.isfinite(duration) or duration < 0):
            r.fail(f"field 'duration' must be a non-negative number of seconds, got {duration!r}")
        if row.get("offset") not in (None, 0, 0.0):
            r.fail(f"field 'offset' is {row['offset']!r}: molora reads whole files, not segments of them "
                   "(cut the segment into its own file, or drop 'offset' when it is 0)")
        msgs = [{"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": prompt}]},
                {"role": "assistant", "content": text}]
        return Sample(msgs, "asr", where,
                      length=estimate_length(msgs, probe_media=probe_media, audio_duration=duration,
                                             modalities=entries))
    if "image" in row:
        r.need("image", "VQA")
        image = r.path(row["image"], "image", "image")
        question = r.text(row, "question")
        if "answers" not in row:
            r.fail("missing field 'answers'")
        answers = row["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            r.fail(f"field 'answers' must be a non-empty list of strings, got {answers!r}")
        if not answers[0].strip():
            r.fail("field 'answers' starts with an empty answer")
        msgs = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": question + VQA_SUFFIX}]},
                {"role": "assistant", "content": answers[0]}]
        return Sample(msgs, "vqa", where, answers=list(answers),
                      length=estimate_length(msgs, probe_media=probe_media, modalities=entries))
    r.fail(f"unknown row shape with keys {sorted(row)} (expected audio+text, audio_filepath+text (NeMo), messages, "
           "image+question+answers, or messages+chosen+rejected)")
    raise AssertionError("unreachable")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def loads_row(line: str, where: str) -> Any:
    """One JSON value; invalid JSON or a key given twice in one object raises ManifestError at ``where``
    (Python's json keeps the last of two equal keys without a word)."""
    try:
        return json.loads(line, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise ManifestError(f"key {e.args[0]!r} is given twice in one object", where) from None
    except json.JSONDecodeError as e:
        # json's messages may end in "at" ("Unterminated string starting at"): one "at" before the column
        raise ManifestError(f"invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno})", where) from None


def _lines(f, limit: int):
    """(line number, bytes or None) for each line of the binary file ``f``; a line longer than
    ``limit`` bytes is read past in chunks (never held whole) and given as None."""
    lineno = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) <= limit or raw.endswith(b"\n"):
            yield lineno, raw
            continue
        size, raw = len(raw), None
        while True:
            chunk = f.readline(1 << 16)
            size += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                break
        yield lineno, size


def read_manifest(path: str | os.PathLike, *, allow_outside_root: bool = False,
                  probe_media: bool = True, outside_root_hint: str | None = None,
                  max_line_bytes: int = MAX_LINE_BYTES, skipped: list[dict] | None = None,
                  modalities: Iterable[Modality] | None = None) -> list[Sample]:
    """Read a JSONL manifest -> list of Sample (see the module docstring for row shapes).

    Raises ``ManifestError`` naming ``file:line`` (lines counted from 1, as editors show them) on the
    first malformed line. ``probe_media`` reads audio/image *headers* for the length estimate (no
    decoding; unreadable files fall back to a constant); pass False on very large manifests to skip all
    file access. A line over ``max_line_bytes`` is never read whole, and a row whose media path never
    names a file (a symlink loop) is left out: both are appended to ``skipped`` (``{"source", "item",
    "reason"}``, as the collator lists bad media) when that list is given, else an error. Chat rows'
    media parts are those of ``modalities`` (a model's ``config.modality_entries()``; by default every
    registered modality).
    """
    return [s for s, _ in read_manifest_rows(path, allow_outside_root=allow_outside_root, probe_media=probe_media,
                                             outside_root_hint=outside_root_hint, max_line_bytes=max_line_bytes,
                                             skipped=skipped, modalities=modalities)]


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest's absolute path (symlinks resolved), or ManifestError naming why it cannot be read."""
    if not str(path).strip():
        raise ManifestError("empty manifest path", "manifest")
    if "\x00" in str(path):
        raise ManifestError("the path contains a NUL character (\\x00)", repr(str(path)))
    try:
        mpath = Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as e:
        raise ManifestError(f"cannot resolve the path ({'symlink loop' if isinstance(e, RuntimeError) else e})",
                            str(path)) from None
    if not mpath.is_file():
        raise ManifestError("is a directory, not a manifest file" if mpath.is_dir() else "manifest file not found",
                            str(mpath))
    return mpath


def read_manifest_rows(path: str | os.PathLike, *, allow_outside_root: bool = False,
                       probe_media: bool = True, outside_root_hint: str | None = None,
                       max_line_bytes: int = MAX_LINE_BYTES, skipped: list[dict] | None = None,
                       modalities: Iterable[Modality] | None = None) -> list[tuple[Sample, dict]]:
    """``read_manifest`` that also returns each row as decoded (``[(Sample, row)]``): the keys a Sample
    does not keep (``id``, ``duration``, ...) are there."""
    mpath = manifest_path(path)
    root = mpath.parent
    out = []

    def skip(where: str, item: str, reason: str, error: type[MoLoRAError]) -> None:
        if skipped is None:
            raise error(reason, f"{where} ({item})" if item and item != "line" else where)
        skipped.append({"source": where, "item": item, "reason": reason})

    with open(mpath, "rb") as f:
        for lineno, raw in _lines(f, max_line_bytes):
            where = f"{mpath}:{lineno}"
            if isinstance(raw, int):
                skip(where, "line", f"line of {raw:,} bytes is over the limit of {max_line_bytes:,} bytes "
                                    "(molora.data.manifest.MAX_LINE_BYTES)", ManifestError)
                continue
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(f"not valid UTF-8 ({e.reason} at byte {e.start})", where) from None
            if not line.strip():
                continue
            row = loads_row(line, where)
            try:
                sample = parse_row(row, where, root, allow_outside_root=allow_outside_root, probe_media=probe_media,
                                   outside_root_hint=outside_root_hint, modalities=modalities)
            except MediaError as e:
                skip(where, e.item or "", e.reason, type(e))
                continue
            out.append((sample, row))
    return out
