"""Result files: per-item JSONL appended and flushed per batch (resume by key), and summaries
(JSON for machines, Markdown for people) written atomically.

A crash can cut the last JSONL line short; ``ResultFile`` drops such a partial last line when
it opens the file, so the next run appends after the last complete row and redoes only the
item whose row was cut.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from molora.errors import MoLoRAError
from molora.staging import plain_file_mode

__all__ = ["ResultFile", "read_jsonl", "write_json", "write_text", "write_summary", "markdown_table", "skip_fields",
           "skip_note"]


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete JSON rows of a JSONL file (a trailing partial line is ignored)."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    with open(p, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if not line.endswith("\n"):
                    break  # cut short by a crash
                raise MoLoRAError(f"invalid JSON in a result file (line {lineno})", f"{p}:{lineno}") from None
    return rows


class ResultFile:
    """Per-item results of one evaluation set, keyed by ``key_field``: one row per item. Opening the file
    drops rows of an item already written above them (rewriting the file when there are any); ``append``
    first reads rows appended since (by another run into the same folder) and never writes an item twice."""

    def __init__(self, path: str | os.PathLike, key_field: str = "id"):
        self.path = Path(path)
        self.key_field = key_field
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self.rows: dict[str, dict] = {}
        rows = read_jsonl(self.path)
        for lineno, row in enumerate(rows, start=1):
            self._take(row, lineno)
        if len(self.rows) < len(rows):   # the same item more than once: keep its first row
            write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows.values()))
        self._offset = self.path.stat().st_size if self.path.exists() else 0

    def _take(self, row, lineno: int) -> None:
        if not isinstance(row, dict) or self.key_field not in row:
            raise MoLoRAError(f"a result row has no {self.key_field!r} (not a file written by molora eval?)",
                              f"{self.path}:{lineno}")
        self.rows.setdefault(str(row[self.key_field]), row)

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def _catch_up(self) -> None:
        """Take the complete rows written to the file since it was last read (another run's)."""
        if not self.path.exists() or self.path.stat().st_size <= self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]   # a row still being written is read next time
        for line in data.decode("utf-8").splitlines():
            if line.strip():
                try:
                    self._take(json.loads(line), 0)
                except (json.JSONDecodeError, MoLoRAError):
                    continue
        self._offset += len(data)

    @property
    def done(self) -> set[str]:
        return set(self.rows)

    def append(self, rows: Iterable[dict]) -> None:
        """Write the rows of items not in the file yet (flushed and synced); rows of items already there are
        left out."""
        self._catch_up()
        new: dict[str, dict] = {}
        for row in rows:
            key = str(row[self.key_field])
            if key not in self.rows:
                new.setdefault(key, row)
        if not new:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for row in new.values():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.update(new)
        self._offset = self.path.stat().st_size

    def select(self, keys: Sequence[str]) -> list[dict]:
        """The rows of ``keys`` in that order (keys without a row are left out)."""
        return [self.rows[k] for k in keys if k in self.rows]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, plain_file_mode())  # not mkstemp's private 0600: others read results
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    _atomic_write(Path(path), json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic_write(Path(path), text)


def write_summary(output_dir: str | os.PathLike, summary: dict, markdown: str,
                  stem: str = "summary") -> tuple[Path, Path]:
    """``<stem>.json`` and ``<stem>.md`` in ``output_dir``; returns both paths."""
    out = Path(output_dir)
    write_json(out / f"{stem}.json", summary)
    write_text(out / f"{stem}.md", markdown)
    return out / f"{stem}.json", out / f"{stem}.md"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        return "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run_settings(args_like: dict) -> dict:
    """The settings every summary records (batch size, dtype, device and what it is)."""
    import torch

    device = str(args_like.get("device"))
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") and torch.cuda.is_available() else \
        "cpu"
    return {**args_like, "device_name": name, "torch": torch.__version__}


def skip_fields(skips) -> dict:
    """The summary fields of a ``SkipList``: ``skipped_count`` and ``skipped`` (every entry)."""
    return {"skipped_count": len(skips.entries), "skipped": list(skips.entries)}


def skip_note(skips) -> str:
    """A Markdown paragraph saying how many items were skipped (empty when none)."""
    if not skips.entries:
        return ""
    return (f"\n**{len(skips.entries)} bad item(s) skipped** (listed in summary.json): the score covers the other "
            "items only, so it is not comparable with a complete run.\n")
