"""The DocVQA / ChartQA layouts people download, read into question records.

``detect_layout(source, split)`` tells them apart:

* ``manifest``: a molora VQA JSONL manifest (``{"image", "question", "answers"}`` rows);
* ``docvqa-json``: DocVQA's official annotation file (``val_v1.0.json``, ``test_v1.0.json``, ...):
  ``{"dataset_name", "dataset_split", "data": [{"questionId", "question", "image": "documents/x.png",
  "answers": [...]}]}`` (the test file has no answers); images are relative to the file's folder.
  Also its folder: the ``<split>_v1.0*.json`` inside is used (``val`` for ``validation``);
* ``chartqa-json``: one ChartQA release file (``test_human.json`` / ``test_augmented.json``):
  ``[{"imgname", "query", "label"}]``, images in the ``png/`` folder beside it; the subset comes from
  the file name;
* ``chartqa-release``: a ChartQA release folder: ``<split>_human.json`` + ``<split>_augmented.json`` +
  ``png/`` (the ``test`` folder of "ChartQA Dataset"), or the dataset root holding ``test/`` ...;
* ``datasets``: anything ``datasets`` reads: a hub id (lmms-lab/DocVQA, HuggingFaceM4/ChartQA,
  lmms-lab/ChartQA), a ``save_to_disk`` folder, parquet / JSON / CSV / Arrow files or a folder of them.

Anything else is an error that lists these layouts. Official-layout records are read here without
opening any image; media paths must stay inside the annotation file's folder unless
``allow_outside_root``.
"""
from __future__ import annotations

import json
from pathlib import Path

from .data import OUTSIDE_ROOT_HINT, SourceError

__all__ = ["detect_layout", "official_records", "ACCEPTED_LAYOUTS", "LayoutError"]

ACCEPTED_LAYOUTS = (
    "a VQA JSONL manifest (rows {\"image\", \"question\", \"answers\"}); "
    "DocVQA's official annotation file (val_v1.0.json / test_v1.0.json: data[].image/question/answers/questionId, "
    "images relative to it) or the folder holding it; "
    "ChartQA's release layout (a folder with png/ and <split>_human.json / <split>_augmented.json of "
    "imgname/query/label, the \"ChartQA Dataset\" root with test/ val/ train/, or one of those JSON files); "
    "a Hugging Face dataset: hub id (lmms-lab/DocVQA, HuggingFaceM4/ChartQA, lmms-lab/ChartQA), a save_to_disk "
    "folder, or parquet / JSON / CSV / Arrow data files or a folder of them")

_SPLIT_FILE = {"validation": "val", "val": "val", "test": "test", "train": "train"}


class LayoutError(SourceError):
    """A local source in none of the accepted layouts."""


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SourceError(f"invalid JSON ({e.msg.removesuffix(' at')} at line {e.lineno} column {e.colno})", str(path)) from None
    except UnicodeDecodeError as e:
        raise SourceError(f"not valid UTF-8 ({e.reason} at byte {e.start})", str(path)) from None


def _is_docvqa(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("data"), list) and \
        all(isinstance(r, dict) and "question" in r and "image" in r for r in obj["data"][:50])


def _is_chartqa(obj) -> bool:
    return isinstance(obj, list) and bool(obj) and \
        all(isinstance(r, dict) and {"imgname", "query"} <= set(r) for r in obj[:50])


def _chartqa_files(folder: Path, split: str) -> list[Path]:
    s = _SPLIT_FILE.get(split, split)
    names = [f"{s}_human.json", f"{s}_augmented.json"]
    if (folder / "png").is_dir() and any((folder / n).is_file() for n in names):
        return [folder / n for n in names if (folder / n).is_file()]
    sub = folder / s
    if (sub / "png").is_dir() and any((sub / n).is_file() for n in names):
        return [sub / n for n in names if (sub / n).is_file()]
    return []


def _docvqa_file(folder: Path, split: str) -> Path | None:
    s = _SPLIT_FILE.get(split, split)
    found = sorted(folder.glob(f"{s}_v1.0*.json")) + sorted(folder.glob(f"{s}/{s}_v1.0*.json"))
    return found[0] if found else None


def detect_layout(source: str, split: str) -> tuple[str, list[Path]]:
    """``(layout, files)`` of a source (module docstring); ``files`` are the annotation files of official layouts."""
    p = Path(source).expanduser()
    if not p.exists():
        return "datasets", []            # a hub id (or a missing path: `datasets` reports it)
    if p.is_file() and p.suffix.lower() == ".jsonl":
        return "manifest", [p]
    if p.is_file() and p.suffix.lower() == ".json":
        obj = _read_json(p)
        if _is_docvqa(obj):
            return "docvqa-json", [p]
        if _is_chartqa(obj):
            return "chartqa-json", [p]
        if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj[:50]):
            return "datasets", []       # a JSON array of records: a data file
        raise LayoutError(f"a JSON file in none of the accepted layouts (top level: {type(obj).__name__}"
                          f"{' with keys ' + str(sorted(obj)[:8]) if isinstance(obj, dict) else ''}). "
                          f"Accepted: {ACCEPTED_LAYOUTS}", str(p))
    if p.is_dir():
        from molora.data.hf_datasets import _is_saved_to_disk

        if _is_saved_to_disk(p):
            return "datasets", []
        files = _chartqa_files(p, split)
        if files:
            return "chartqa-release", files
        f = _docvqa_file(p, split)
        if f is not None and _is_docvqa(_read_json(f)):
            return "docvqa-json", [f]
        data_files = [q for q in p.rglob("*") if q.suffix.lower() in (".parquet", ".arrow", ".csv", ".jsonl")
                      or (q.suffix.lower() == ".json" and q.name not in ("dataset_info.json", "state.json"))]
        if data_files:
            return "datasets", []
        raise LayoutError(f"a folder in none of the accepted layouts (for split {split!r}). Accepted: "
                          f"{ACCEPTED_LAYOUTS}", str(p))
    if p.is_file():
        return "datasets", []           # parquet / csv / arrow: `datasets` reads (or refuses) it
    raise LayoutError(f"not a file or folder. Accepted: {ACCEPTED_LAYOUTS}", str(p))


def _media_path(base: Path, value, where: str, root: Path, allow_outside_root: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SourceError(f"image must be a path string, got {value!r}", where)
    if "\x00" in value:
        raise SourceError(f"image {value!r} contains a NUL character (\\x00), which no file name can hold", where)
    path = Path(value).expanduser()
    try:
        resolved = (path if path.is_absolute() else base / path).resolve()
    except (RuntimeError, OSError) as e:  # Python 3.11: RuntimeError("Symlink loop from ...")
        raise SourceError(f"image {value!r}: {'symlink loop' if isinstance(e, RuntimeError) else e}: the path never "
                          "names a file", where) from None
    if not allow_outside_root and not resolved.is_relative_to(root):
        raise SourceError(f"image {value!r} resolves to {resolved}, outside the data root {root} "
                          f"({OUTSIDE_ROOT_HINT})", where)
    return str(resolved)


def official_records(layout: str, files: list[Path], *, allow_outside_root: bool = False) -> list[dict]:
    """Question records of an official layout: ``{"where", "id", "question", "answers", "subset", "image"}``
    (``where`` = ``FILE question N``, N counted from 1; ``image`` an absolute path, ``answers`` None when absent).
    A record with unusable values becomes ``{"where", "error": SourceError}`` (skipped and listed later)."""
    out: list[dict] = []
    for f in files:
        f = f.resolve()
        obj = _read_json(f)
        if layout == "docvqa-json":
            rows, subset, base = obj["data"], None, f.parent
        else:
            subset = "human" if "human" in f.name else ("augmented" if "augment" in f.name else None)
            rows, base = obj, f.parent / "png"
        for i, r in enumerate(rows):
            where = f"{f} question {i + 1}"     # counted from 1, as manifest lines and dataset rows are
            try:
                out.append(_record(layout, r, i, where, base, f.parent, subset, allow_outside_root))
            except SourceError as e:
                out.append({"where": where, "error": e})
    return out


def _record(layout, r, i, where, base, root, subset, allow_outside_root) -> dict:
    if not isinstance(r, dict):
        raise SourceError(f"a record must be an object, got {type(r).__name__}", where)
    if layout == "docvqa-json":
        question, answers, image, qid = r.get("question"), r.get("answers"), r.get("image"), r.get("questionId", i)
    else:
        question, answers, image, qid = r.get("query"), r.get("label"), r.get("imgname"), i
    if not isinstance(question, str):
        raise SourceError(f"question must be a string, got {question!r}", where)
    if isinstance(answers, str):
        answers = [answers]
    if answers is not None and not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
        raise SourceError(f"answers must be a string or a list of strings, got {answers!r}", where)
    return {"where": where, "id": qid, "question": question, "answers": answers or None, "subset": subset,
            "image": _media_path(base, image, where, root, allow_outside_root)}
