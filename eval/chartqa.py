"""`molora eval chartqa`: relaxed accuracy on ChartQA, human / augmented / overall.

    molora eval chartqa --model DIR --output-dir OUT                               # lmms-lab/ChartQA test
    molora eval chartqa --model DIR --data "ChartQA Dataset/test" --output-dir OUT # the release layout
    molora eval chartqa --model DIR --data HuggingFaceM4_ChartQA/ --output-dir OUT # a local copy (save_to_disk)
    molora eval chartqa --model DIR --human h.jsonl --augmented a.jsonl --output-dir OUT

Sources: any layout of ``molora.eval.vqa_layouts`` (ChartQA's release folder: ``png/`` +
``test_human.json`` / ``test_augmented.json`` with ``imgname`` / ``query`` / ``label``; the hub's
HuggingFaceM4/ChartQA and lmms-lab/ChartQA; local datasets; manifests). Re-running resumes; results of
another model or other settings in OUT are refused unless ``--overwrite``; a bad image is skipped and
listed in the summary (``--strict`` stops instead).

The subset of each question comes from a column (``type`` / ``source`` / ``subset`` holding
human_test / augmented_test, or HuggingFaceM4's ``human_or_machine`` 0/1), from the release file
it was read from (``*_human.json`` / ``*_augmented.json``), or from the manifest it was read from
(``--human`` / ``--augmented``). Prompt: question +
"\\nAnswer the question with a single word.", greedy, 16 new tokens. ``OUT/predictions.jsonl``
rows: ``id``, ``subset``, ``question``, ``answers``, ``prediction``, ``correct``; summary:
accuracy (0..1) per subset and overall (over all questions; 0..1 in the Markdown and on the console
too), titled after the data (its file or folder names; "ChartQA test" for the hub set).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from molora.errors import ConfigError
from molora.prompts import CHARTQA_SUFFIX

from .relaxed import RELATIVE_TOLERANCE, RELAXED_REFERENCE, relaxed_accuracy_any
from .report import markdown_table, run_settings, skip_fields, skip_note, write_summary
from .skips import SkipList, nothing_scored, print_skips
from .vqa import add_common_arguments, download_hint, load_for_args, run_vqa, source_title, vqa_items, vqa_record

__all__ = ["CHARTQA_SUFFIX", "chartqa_items", "evaluate_chartqa", "add_arguments", "main", "accuracy_by_subset"]

DEFAULT_DATA = "lmms-lab/ChartQA"


def accuracy_by_subset(rows: list[dict]) -> dict:
    """``{"human": {...}, "augmented": {...}, "overall": {...}}`` with ``accuracy`` (0..1),
    ``correct`` and ``questions``, recomputed from each row's prediction and answers."""
    groups: dict[str, list[bool]] = {}
    for r in rows:
        ok = relaxed_accuracy_any(r["prediction"], r["answers"])
        groups.setdefault(r.get("subset") or "unknown", []).append(ok)
        groups.setdefault("overall", []).append(ok)
    order = [k for k in ("human", "augmented") if k in groups] + \
        sorted(k for k in groups if k not in ("human", "augmented", "overall")) + (["overall"] if groups else [])
    return {k: {"accuracy": sum(groups[k]) / len(groups[k]), "correct": sum(groups[k]), "questions": len(groups[k])}
            for k in order}


def chartqa_items(sources: list[tuple[str, str | None]], *, split: str = "test", config: str | None = None,
                  limit: int | None = None, allow_outside_root: bool = False, skips: SkipList | None = None):
    """The questions of ``sources`` (``[(data, subset)]``; subset None: from the subset column or file)."""
    items = []
    for data, subset in sources:
        hub = not Path(data).expanduser().exists()
        items += vqa_items(data, split=split, config=config if hub else None, suffix=CHARTQA_SUFFIX, limit=limit,
                           subset=subset, hint=download_hint(data, split, config) if hub else None,
                           allow_outside_root=allow_outside_root, skips=skips)
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):  # two manifests with the same ids: qualify by subset
        for it in items:
            it.key = it.meta["id"] = f"{it.meta['subset']}/{it.key}"
    return items


def evaluate_chartqa(model, processor, sources: list[tuple[str, str | None]], output_dir, *, split: str = "test",
                     config: str | None = None, batch_size: int = 8, max_new_tokens: int = 16,
                     limit: int | None = None, warmup_batches: int = 0, model_name: str | None = None,
                     dtype: str | None = None, device: str | None = None, items=None, overwrite: bool = False,
                     strict: bool = False, allow_outside_root: bool = False, skips: SkipList | None = None) -> dict:
    """Run ChartQA over ``sources`` (``[(data, subset)]``; subset None means "from the subset column");
    ``items`` / ``skips``: from ``chartqa_items(...)`` when the caller has listed them already. Results of
    another model or other settings in ``output_dir`` are refused unless ``overwrite``; bad items are
    skipped and listed (``strict``: the first one stops the run)."""
    skips = skips if skips is not None else SkipList(strict)
    if items is None:
        items = chartqa_items(sources, split=split, config=config, limit=limit, allow_outside_root=allow_outside_root,
                              skips=skips)
    record = vqa_record(output_dir, "chartqa", model, model_name, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, sources=[f"{d} ({s or 'subset column'})" for d, s in sources],
                        split=split, config=config, suffix=CHARTQA_SUFFIX)
    rows = run_vqa(model, processor, items, output_dir,
                   score=lambda p, a: {"correct": relaxed_accuracy_any(p, a)},
                   batch_size=batch_size, max_new_tokens=max_new_tokens, warmup_batches=warmup_batches,
                   desc="chartqa", record=record, overwrite=overwrite, skips=skips)
    scores = accuracy_by_subset(rows)
    title = source_title([d for d, _ in sources], split, (DEFAULT_DATA, "ChartQA"))
    summary = {"task": "chartqa", "title": title, "model": model_name, "data": [d for d, _ in sources],
               "split": split,
               "metric": f"relaxed accuracy: numeric answers within {RELATIVE_TOLERANCE:.0%} of the target "
                         "(relative to the target; trailing % divides by 100; zero target -> exact), "
                         "else case-insensitive exact match",
               "reproduces": RELAXED_REFERENCE,
               "prompt_suffix": CHARTQA_SUFFIX, "scores": scores,
               "settings": run_settings({"batch_size": batch_size, "batch_sizes_used": record.batch_sizes,
                                         "dtype": str(dtype), "device": str(device), "max_new_tokens": max_new_tokens,
                                         "decoding": "greedy", "limit": limit}),
               **skip_fields(skips)}
    md = (f"# Relaxed accuracy on {title}: {model_name}\n\n"
          + markdown_table(["subset", "relaxed accuracy (0..1)", "questions"],
                           [(k, f"{v['accuracy']:.4f}", v["questions"]) for k, v in scores.items()])
          + f"\nbatch size {batch_size}, dtype {dtype}, device {device}, greedy, max_new_tokens {max_new_tokens}\n"
          + skip_note(skips))
    write_summary(output_dir, summary, md)
    print_skips(skips.entries, str(Path(output_dir) / "summary.json"))
    if not rows:
        raise nothing_scored(" + ".join(d for d, _ in sources), skips.entries, "question")
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, default_data=DEFAULT_DATA, default_split="test", default_config=None, max_new_tokens=16)
    g = p.add_argument_group("subsets from two manifests (instead of --data)")
    g.add_argument("--human", help="VQA JSONL manifest of the human-written questions")
    g.add_argument("--augmented", help="VQA JSONL manifest of the augmented (machine-generated) questions")


def main(args) -> int:
    if args.human or args.augmented:
        if not (args.human and args.augmented):
            raise ConfigError("give both --human and --augmented (or one --data with a subset column)", "--human")
        sources = [(args.human, "human"), (args.augmented, "augmented")]
    else:
        sources = [(args.data, None)]
    skips = SkipList(args.strict)
    items = chartqa_items(sources, split=args.split, config=args.config, limit=args.limit,
                          allow_outside_root=args.allow_outside_root, skips=skips)
    model, processor, device, dtype = load_for_args(args)
    s = evaluate_chartqa(model, processor, sources, args.output_dir, split=args.split, config=args.config,
                         batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, limit=args.limit,
                         warmup_batches=args.warmup_batches, model_name=args.model, dtype=dtype, device=device,
                         items=items, overwrite=args.overwrite, skips=skips)
    for k, v in s["scores"].items():
        print(f"{s['title']} {k}: relaxed accuracy {v['accuracy']:.4f} (0..1; {v['questions']} questions)")
    return 0
