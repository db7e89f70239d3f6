"""What the DocVQA and ChartQA runners share: VQA items from any accepted layout
(``molora.eval.vqa_layouts``), the common CLI options, and the generate-and-record loop over
``OUT/predictions.jsonl`` (resume by id, outputs keyed by ``OUT/run.json``, bad items skipped and listed)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from .data import Item, SourceError, column_names, dataset_items, first_column, load_rows, manifest_rows, media_of, \
    row_name, unique_key
from .identity import RunRecord, producer_of
from .report import ResultFile
from .skips import SkipList
from .vqa_layouts import ACCEPTED_LAYOUTS, detect_layout, official_records

__all__ = ["vqa_items", "subset_of", "run_vqa", "add_common_arguments", "load_for_args", "source_title"]

QUESTION_COLUMNS = ("question", "query")
ANSWER_COLUMNS = ("answers", "answer", "label")
ID_COLUMNS = ("questionId", "question_id", "qid", "id")
SUBSET_COLUMNS = ("type", "source", "subset", "human_or_machine")


def subset_of(value) -> str | None:
    """ChartQA subset name from a column value: "human_test"/"human" -> human,
    "augmented_test"/"machine" -> augmented; HuggingFaceM4/ChartQA's ``human_or_machine`` 0/1 -> human/augmented."""
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, int):
        return "augmented" if int(value) else "human"
    v = str(value).lower()
    if "human" in v:
        return "human"
    if "augment" in v or "machine" in v:
        return "augmented"
    return v


def _answers(value, where: str, required: bool) -> list[str] | None:
    if value is None or (isinstance(value, (list, tuple)) and not value):
        if required:
            raise SourceError("no ground-truth answers (the test split's answers are hidden: use --split test for a "
                              "submission file)", where)
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value):
        return list(value)
    raise SourceError(f"answers must be a string or a list of strings, got {value!r}", where)


def _image_item(key: str, prompt: str, path: str, meta: dict, source: str) -> Item:
    from molora.encoders.image_transform import load_image

    return Item(key, prompt, "image", lambda p=path: load_image(p), meta, source=source, media=path)


def vqa_items(source: str, *, split: str, config: str | None, suffix: str, limit: int | None = None,
              require_answers: bool = True, subset: str | None = None, hint: str | None = None,
              allow_outside_root: bool = False, skips: SkipList | None = None) -> list[Item]:
    """Items of a VQA source in any accepted layout (``molora.eval.vqa_layouts``). The prompt is
    ``question + suffix``; ``meta`` = ``{"id", "question", "answers", "subset"}``. Rows with unusable
    values go to ``skips`` (or raise when it is None)."""
    skips = skips if skips is not None else SkipList(strict=True)
    layout, files = detect_layout(source, split)
    seen: dict[str, int] = {}
    items: list[Item] = []
    if layout == "manifest":
        before = len(skips)
        pairs = manifest_rows(source, allow_outside_root=allow_outside_root, skips=skips)
        if not pairs and len(skips) == before:
            raise SourceError("the manifest holds no rows", str(Path(source).expanduser().resolve()))
        for i, (sample, raw) in enumerate(pairs[:limit] if limit is not None else pairs):
            if sample.kind != "vqa":
                raise SourceError(f"a VQA manifest row needs 'image', 'question' and 'answers' (this row is a "
                                  f"{sample.kind} row)", sample.source)
            key = unique_key(raw.get("id", raw.get("questionId", i)), seen)
            meta = {"id": key, "question": raw["question"], "answers": list(raw["answers"]),
                    "subset": subset or subset_of(next((raw[c] for c in SUBSET_COLUMNS if c in raw), None))}
            items.append(_image_item(key, raw["question"] + suffix, media_of(sample, "image"), meta, sample.source))
        return items
    if layout in ("docvqa-json", "chartqa-json", "chartqa-release"):
        records = official_records(layout, files, allow_outside_root=allow_outside_root)
        if not records:
            raise SourceError("the annotation file holds no questions", ", ".join(map(str, files)))
        for r in records[:limit] if limit is not None else records:
            try:
                if "error" in r:
                    raise r["error"]
                answers = _answers(r["answers"], r["where"], require_answers)
            except SourceError as e:
                skips.add(r["where"], "", e)
                continue
            key = unique_key(r["id"] if r["subset"] is None else f"{r['subset']}/{r['id']}", seen)
            meta = {"id": key, "question": r["question"], "answers": answers, "subset": subset or r["subset"]}
            items.append(_image_item(key, r["question"] + suffix, r["image"], meta, r["where"]))
        return items
    try:
        rows, name = load_rows(source, split=split, config=config, media_column="image", limit=limit, hint=hint)
    except SourceError as e:
        if Path(source).expanduser().exists():   # a local source `datasets` cannot read either
            raise SourceError(f"{e.reason}. Accepted layouts: {ACCEPTED_LAYOUTS}", e.item) from e
        raise
    if not len(rows):
        raise SourceError(f"the dataset holds no rows (split {split!r})", name)
    cols = column_names(rows)
    q_col, a_col = first_column(cols, QUESTION_COLUMNS), first_column(cols, ANSWER_COLUMNS)
    id_col, s_col = first_column(cols, ID_COLUMNS), first_column(cols, SUBSET_COLUMNS)
    if q_col is None:
        raise SourceError(f"no question column (tried {list(QUESTION_COLUMNS)}); columns: {cols}. Accepted layouts: "
                          f"{ACCEPTED_LAYOUTS}", name)
    if a_col is None and require_answers:
        raise SourceError(f"no answers column (tried {list(ANSWER_COLUMNS)}); columns: {cols}", name)

    def make(row, i):
        where = row_name(name, i)
        question = row[q_col]
        if not isinstance(question, str):
            raise SourceError(f"question must be a string, got {question!r}", where)
        answers = _answers(row.get(a_col) if a_col else None, where, require_answers)
        key = unique_key(row[id_col] if id_col else i, seen)
        meta = {"id": key, "question": question, "answers": answers,
                "subset": subset or subset_of(row[s_col] if s_col else None)}
        return {"key": key, "prompt": question + suffix, "meta": meta}

    return dataset_items(rows, name, media="image", media_column="image", make=make, skips=skips)


def run_vqa(model, processor, items: list[Item], output_dir, *, score: Callable[[str, list[str] | None], dict],
            batch_size: int, max_new_tokens: int, warmup_batches: int = 0, desc: str = "vqa",
            record: RunRecord | None = None, overwrite: bool = False, skips: SkipList | None = None) -> list[dict]:
    """Generate for the items not yet in ``OUT/predictions.jsonl``; returns the rows of ``items`` in order.
    Each row: ``id``, ``subset`` (when known), ``question``, ``answers``, ``prediction`` + ``score(...)``.
    ``record`` (``RunRecord``) is claimed first: results of another model or other settings are refused
    unless ``overwrite``."""
    from .generate import Generator, run_items

    if record is not None:
        record.claim(overwrite, extra_outputs=("submission.json",))
    results = ResultFile(Path(output_dir) / "predictions.jsonl", key_field="id")

    def make_row(item: Item, prediction: str, seconds: float) -> dict:
        m = item.meta
        row = {"id": m["id"]}
        if m.get("subset") is not None:
            row["subset"] = m["subset"]
        row.update(question=m["question"], answers=m["answers"], prediction=prediction, time=seconds)
        row.update(score(prediction, m["answers"]))
        return row

    run_items(items, results, Generator(model, processor, max_new_tokens), make_row=make_row,
              batch_size=batch_size, warmup_batches=warmup_batches, desc=desc, skips=skips)
    return results.select([it.key for it in items])


def vqa_record(output_dir, task: str, model, model_name: str | None, *, batch_size: int, max_new_tokens: int,
               sources: list, split: str, config: str | None, suffix: str) -> RunRecord:
    """The ``RunRecord`` of a VQA run: one result file, ``predictions.jsonl``, and what it was read from."""
    return RunRecord(output_dir, task, producer_of(model, model_name, batch_size=batch_size,
                                                   max_new_tokens=max_new_tokens),
                     {"predictions.jsonl": {"data": [str(s) for s in sources], "split": split, "config": config,
                                            "prompt_suffix": suffix}})


def add_common_arguments(p: argparse.ArgumentParser, *, default_data: str, default_split: str,
                         default_config: str | None, max_new_tokens: int) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="checkpoint directory, hub id or preset name")
    g.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default_data,
                   help=f"hub id, local dataset (save_to_disk dir, parquet/JSON/CSV file or dir), the official "
                        f"release layout (file or folder) or a VQA JSONL manifest (default {default_data}). Relative "
                        "image paths resolve against the file's own folder, never the working folder")
    g.add_argument("--split", default=default_split, help=f"dataset split (default {default_split})")
    g.add_argument("--config", default=default_config, help=f"dataset config (default {default_config})")
    g.add_argument("--limit", type=int, help="evaluate only the first N questions")
    g.add_argument("--allow-outside-root", action="store_true",
                   help="let a manifest / annotation file name images outside its own folder")
    g = p.add_argument_group("how")
    g.add_argument("--output-dir", required=True, help="predictions.jsonl, run.json and summary.json/.md go here; "
                                                       "re-running resumes")
    g.add_argument("--overwrite", action="store_true",
                   help="replace results in --output-dir made by another model or with other settings")
    g.add_argument("--strict", action="store_true", help="stop at the first bad item instead of skipping it")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--warmup-batches", type=int, default=0, help="untimed batches first (default 0: not timed runs)")


def source_title(sources: list[str], split: str, default: tuple[str, str]) -> str:
    """What summaries call the data: ``default[1]`` ("DocVQA validation") for the task's own hub set
    ``default[0]``, otherwise the user's sources by name (a file's or folder's name, a hub id), with the
    split where a dataset has splits."""
    if list(sources) == [default[0]]:
        return f"{default[1]} {split}"
    names = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_file() and p.suffix.lower() in (".jsonl", ".json"):
            names.append(p.name)                       # a manifest or annotation file: no splits
        else:
            names.append(f"{p.name if p.exists() else src} [{split}]")
    return " + ".join(names)


def download_hint(data: str, split: str, config: str | None, flag: str = "--data") -> str:
    cfg = f"'{config}', " if config else ""
    return (f"Download it where there is network, e.g. `python -c \"import datasets; datasets.load_dataset("
            f"'{data}', {cfg}split='{split}').save_to_disk('DIR')\"`, then pass {flag} DIR")


def load_for_args(args):
    from .generate import load_model_and_processor

    model, processor, device, dtype = load_model_and_processor(args.model, args.dtype, args.device)
    return model, processor, device, str(dtype).replace("torch.", "")
