"""`molora eval chartqa`: relaxed accuracy on ChartQA, human / augmented / overall.

    molora eval chartqa --model DIR --output-dir OUT                               # lmms-lab/ChartQA test
    molora eval chartqa --model DIR --data chartqa_test/ --output-dir OUT          # a local copy
    molora eval chartqa --model DIR --human h.jsonl --augmented a.jsonl --output-dir OUT

The subset of each question comes from a column (``type`` / ``source`` / ``subset`` holding
human_test / augmented_test, or HuggingFaceM4's ``human_or_machine`` 0/1), or from the
manifest it was read from (``--human`` / ``--augmented``). Prompt: question +
"\\nAnswer the question with a single word.", greedy, 16 new tokens. ``OUT/predictions.jsonl``
rows: ``id``, ``subset``, ``question``, ``answers``, ``prediction``, ``correct``; summary:
accuracy (0..1) per subset and overall (over all questions; x100 in the Markdown).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from molora.errors import ConfigError

from .relaxed import RELATIVE_TOLERANCE, relaxed_accuracy_any
from .report import markdown_table, run_settings, write_summary
from .vqa import add_common_arguments, download_hint, load_for_args, run_vqa, vqa_items

__all__ = ["CHARTQA_SUFFIX", "chartqa_items", "evaluate_chartqa", "add_arguments", "main", "accuracy_by_subset"]

CHARTQA_SUFFIX = "\nAnswer the question with a single word."
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
                  limit: int | None = None):
    """The questions of ``sources`` (``[(data, subset)]``; subset None: from the subset column)."""
    items = []
    for data, subset in sources:
        hub = not Path(data).expanduser().exists()
        items += vqa_items(data, split=split, config=config if hub else None, suffix=CHARTQA_SUFFIX, limit=limit,
                           subset=subset, hint=download_hint(data, split, config) if hub else None)
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):  # two manifests with the same ids: qualify by subset
        for it in items:
            it.key = it.meta["id"] = f"{it.meta['subset']}/{it.key}"
    return items


def evaluate_chartqa(model, processor, sources: list[tuple[str, str | None]], output_dir, *, split: str = "test",
                     config: str | None = None, batch_size: int = 8, max_new_tokens: int = 16,
                     limit: int | None = None, warmup_batches: int = 0, model_name: str | None = None,
                     dtype: str | None = None, device: str | None = None, items=None) -> dict:
    """Run ChartQA over ``sources`` (``[(data, subset)]``; subset None means "from the subset column");
    ``items``: ``chartqa_items(...)`` when the caller has listed them already."""
    items = items if items is not None else chartqa_items(sources, split=split, config=config, limit=limit)
    rows = run_vqa(model, processor, items, output_dir,
                   score=lambda p, a: {"correct": relaxed_accuracy_any(p, a)},
                   batch_size=batch_size, max_new_tokens=max_new_tokens, warmup_batches=warmup_batches,
                   desc="chartqa")
    scores = accuracy_by_subset(rows)
    summary = {"task": "chartqa", "model": model_name, "data": [d for d, _ in sources], "split": split,
               "metric": f"relaxed accuracy: numeric answers within {RELATIVE_TOLERANCE:.0%} of the target "
                         "(relative to the target; trailing % divides by 100; zero target -> exact), "
                         "else case-insensitive exact match",
               "prompt_suffix": CHARTQA_SUFFIX, "scores": scores,
               "settings": run_settings({"batch_size": batch_size, "dtype": str(dtype), "device": str(device),
                                         "max_new_tokens": max_new_tokens, "decoding": "greedy", "limit": limit})}
    md = (f"# ChartQA {split}: {model_name}\n\n"
          + markdown_table(["subset", "relaxed accuracy (x100)", "questions"],
                           [(k, 100 * v["accuracy"], v["questions"]) for k, v in scores.items()])
          + f"\nbatch size {batch_size}, dtype {dtype}, device {device}, greedy, max_new_tokens {max_new_tokens}\n")
    write_summary(output_dir, summary, md)
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
    items = chartqa_items(sources, split=args.split, config=args.config, limit=args.limit)
    model, processor, device, dtype = load_for_args(args)
    s = evaluate_chartqa(model, processor, sources, args.output_dir, split=args.split, config=args.config,
                         batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, limit=args.limit,
                         warmup_batches=args.warmup_batches, model_name=args.model, dtype=dtype, device=device,
                         items=items)
    for k, v in s["scores"].items():
        print(f"ChartQA {k}: relaxed accuracy {100 * v['accuracy']:.2f} ({v['questions']} questions)")
    return 0
