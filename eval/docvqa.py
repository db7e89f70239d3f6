"""`molora eval docvqa`: ANLS on DocVQA validation, or the test-split submission file.

    molora eval docvqa --model DIR --output-dir OUT                          # lmms-lab/DocVQA validation
    molora eval docvqa --model DIR --data val/val_v1.0.json --output-dir OUT # the official release layout
    molora eval docvqa --model DIR --data docvqa_val/ --output-dir OUT       # a local copy (save_to_disk, parquet)
    molora eval docvqa --model DIR --data qa.jsonl --output-dir OUT          # a VQA manifest
    molora eval docvqa --model DIR --split test --output-dir OUT             # OUT/submission.json

Sources: any layout of ``molora.eval.vqa_layouts`` (the official ``val_v1.0.json`` with its
``documents/`` folder, or the folder holding it; the hub's lmms-lab/DocVQA; local datasets;
manifests). ANLS is the official DocVQA rule (``molora.eval.anls``). Re-running resumes; results of
another model or other settings in OUT are refused unless ``--overwrite``; a bad image is skipped and
listed in the summary (``--strict`` stops instead).

Prompt: question + "\\nAnswer the question using a single word or phrase.", greedy, 32 new
tokens (the common harnesses). ``OUT/predictions.jsonl``: one row per question (``id``,
``question``, ``answers``, ``prediction``, ``anls``), appended per batch; a re-run resumes.
``OUT/summary.json`` / ``.md``: ANLS (0..1, mean over questions; 0..1 in the Markdown and on the
console too), titled after the data (its file or folder name; "DocVQA validation" for the hub set).
With ``--split test`` (answers hidden) ``OUT/submission.json`` is
``[{"questionId": ..., "answer": ...}]`` for the official server.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from molora.prompts import VQA_SUFFIX

from .anls import ANLS_REFERENCE, ANLS_THRESHOLD, anls, mean_anls
from .report import markdown_table, run_settings, skip_fields, skip_note, write_json, write_summary
from .skips import SkipList, nothing_scored, print_skips
from .vqa import add_common_arguments, download_hint, load_for_args, run_vqa, source_title, vqa_items, vqa_record

__all__ = ["docvqa_items", "evaluate_docvqa", "add_arguments", "main"]

DEFAULT_DATA, DEFAULT_CONFIG = "lmms-lab/DocVQA", "DocVQA"


def docvqa_items(data: str, *, split: str = "validation", config: str | None = DEFAULT_CONFIG,
                 limit: int | None = None, allow_outside_root: bool = False, skips: SkipList | None = None):
    """The questions of ``data`` (answers required unless ``split == "test"``); nothing decoded yet."""
    hub = not Path(data).expanduser().exists()
    return vqa_items(data, split=split, config=config if hub else None, suffix=VQA_SUFFIX, limit=limit,
                     require_answers=split != "test", hint=download_hint(data, split, config) if hub else None,
                     allow_outside_root=allow_outside_root, skips=skips)


def evaluate_docvqa(model, processor, data: str, output_dir, *, split: str = "validation",
                    config: str | None = DEFAULT_CONFIG, batch_size: int = 8, max_new_tokens: int = 32,
                    limit: int | None = None, warmup_batches: int = 0, model_name: str | None = None,
                    dtype: str | None = None, device: str | None = None, items=None, overwrite: bool = False,
                    strict: bool = False, allow_outside_root: bool = False, skips: SkipList | None = None) -> dict:
    """Run DocVQA over ``data``; writes predictions, summary (and the submission file for the test split).
    ``items`` / ``skips``: from ``docvqa_items(...)`` when the caller has listed them already. Results of
    another model or other settings in ``output_dir`` are refused unless ``overwrite``; bad items are
    skipped and listed (``strict``: the first one stops the run)."""
    test = split == "test"
    skips = skips if skips is not None else SkipList(strict)
    if items is None:
        items = docvqa_items(data, split=split, config=config, limit=limit, allow_outside_root=allow_outside_root,
                             skips=skips)
    score = (lambda p, a: {}) if test else (lambda p, a: {"anls": anls(p, a)})
    record = vqa_record(output_dir, "docvqa", model, model_name, batch_size=batch_size, max_new_tokens=max_new_tokens,
                        sources=[data], split=split, config=config, suffix=VQA_SUFFIX)
    rows = run_vqa(model, processor, items, output_dir, score=score, batch_size=batch_size,
                   max_new_tokens=max_new_tokens, warmup_batches=warmup_batches, desc="docvqa", record=record,
                   overwrite=overwrite, skips=skips)
    title = source_title([data], split, (DEFAULT_DATA, "DocVQA"))
    summary = {"task": "docvqa", "title": title, "model": model_name, "data": data, "split": split,
               "questions": len(rows),
               "metric": f"ANLS (0..1): mean over questions of max over answers of 1 - NL, 0 below "
                         f"{ANLS_THRESHOLD} (exactly {ANLS_THRESHOLD} kept); lowercased, stripped, whitespace "
                         "collapsed; NL = edit distance / max(len(gt.upper()), len(pred.upper())) of the raw strings",
               "reproduces": ANLS_REFERENCE,
               "prompt_suffix": VQA_SUFFIX,
               "settings": run_settings({"batch_size": batch_size, "batch_sizes_used": record.batch_sizes,
                                         "dtype": str(dtype), "device": str(device), "max_new_tokens": max_new_tokens,
                                         "decoding": "greedy", "limit": limit}),
               **skip_fields(skips)}
    out = Path(output_dir)
    if test:
        submission = [{"questionId": _qid(r["id"]), "answer": r["prediction"]} for r in rows]
        write_json(out / "submission.json", submission)
        summary.update(anls=None, submission="submission.json")
        md = (f"# DocVQA test predictions, {title}: {model_name}\n\n{len(rows)} questions; answers are hidden: upload "
              f"`submission.json` to the DocVQA server for the score.\n")
    else:
        summary["anls"] = mean_anls([r["prediction"] for r in rows], [r["answers"] for r in rows]) if rows else None
        md = (f"# ANLS on {title}: {model_name}\n\n"
              + markdown_table(["questions", "ANLS (0..1)"],
                               [(len(rows), None if summary["anls"] is None else f"{summary['anls']:.4f}")])
              + f"\nbatch size {batch_size}, dtype {dtype}, device {device}, greedy, max_new_tokens {max_new_tokens}\n")
    write_summary(out, summary, md + skip_note(skips))
    print_skips(skips.entries, str(out / "summary.json"))
    if not rows:
        raise nothing_scored(str(data), skips.entries, "question")
    return summary


def _qid(key: str):
    return int(key) if key.isdigit() else key


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, default_data=DEFAULT_DATA, default_split="validation", default_config=DEFAULT_CONFIG,
                         max_new_tokens=32)


def main(args) -> int:
    skips = SkipList(args.strict)
    items = docvqa_items(args.data, split=args.split, config=args.config, limit=args.limit,
                         allow_outside_root=args.allow_outside_root, skips=skips)
    model, processor, device, dtype = load_for_args(args)
    s = evaluate_docvqa(model, processor, args.data, args.output_dir, split=args.split, config=args.config,
                        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, limit=args.limit,
                        warmup_batches=args.warmup_batches, model_name=args.model, dtype=dtype, device=device,
                        items=items, overwrite=args.overwrite, skips=skips)
    if s.get("anls") is not None:
        print(f"{s['title']}: ANLS {s['anls']:.4f} (0..1) over {s['questions']} questions")
    else:
        print(f"{s['title']}: {s['questions']} predictions -> {Path(args.output_dir) / 'submission.json'}")
    return 0
