"""`molora eval rescore`: score the predictions an earlier run saved again, without running the model.

    molora eval rescore runs/asr --protocol open-asr          # -> runs/asr/summary.rescored-open-asr.{json,md}
    molora eval rescore runs/docvqa                           # -> runs/docvqa/summary.rescored.{json,md}

The folder is an output folder of ``molora eval asr|docvqa|chartqa``: its ``run.json`` says which task
wrote it and which result files it holds. ASR predictions are scored with ``--protocol`` (its
normaliser and WER algorithm; default open-asr-2026); DocVQA and ChartQA predictions with today's
ANLS / relaxed accuracy. The new summary goes next to the old one, which is never touched; a
rescored summary already there is refused unless ``--overwrite``. RTFx comes from the timings the run
saved. Clips that the run's own protocol dropped before inference (empty references) have no
prediction, so they cannot be scored under another protocol: the summary says so.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from molora.errors import ConfigError

from .data import SourceError
from .identity import RECORD, read_record
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS
from .report import markdown_table, read_jsonl, write_summary

__all__ = ["rescore", "add_arguments", "main"]


def _record(run_dir: Path) -> dict:
    path = run_dir / RECORD
    if not run_dir.is_dir():
        raise SourceError("not a folder (give the --output-dir of an earlier molora eval run)", str(run_dir))
    if not path.is_file():
        raise SourceError(f"no {RECORD} here: not the output folder of a molora eval run", str(run_dir))
    record, why = read_record(path)
    if why is not None:
        raise SourceError(f"{why}: cannot tell which task and result files this folder holds", str(path))
    return record


def _rows(path: Path) -> list[dict]:
    """The rows of a result file, one per id (the first), in file order; the file is not changed."""
    if not path.is_file():
        raise SourceError(f"the result file that {RECORD} names is missing", str(path))
    rows: dict[str, dict] = {}
    for lineno, row in enumerate(read_jsonl(path), start=1):
        if not isinstance(row, dict) or "id" not in row:
            raise SourceError("a result row has no 'id' (not a file written by molora eval?)", f"{path}:{lineno}")
        rows.setdefault(str(row["id"]), row)
    if not rows:
        raise SourceError("holds no predictions to score", str(path))
    return list(rows.values())


def _asr(run_dir: Path, record: dict, protocol: str) -> tuple[dict, str]:
    from .asr import combine_sets, score_rows
    from .normalizer import normalizer_name

    proto = PROTOCOLS[protocol]
    sets = {}
    for name in sorted(record["sources"]):
        rows = _rows(run_dir / name)
        needed = {"text", "pred_text", "duration", "time"} - set(rows[0])
        if needed:
            raise SourceError(f"rows lack {sorted(needed)}: not an ASR result file", str(run_dir / name))
        sets[Path(name).stem] = {"manifest": name, **score_rows(rows, protocol)}
    was = record["producer"].get("settings", {}).get("scoring_protocol")
    summary = {"task": "asr", "rescored_from": str(run_dir), "model": record["producer"].get("model"),
               "protocol": protocol, "protocol_description": proto.description, "scored_before_with": was,
               "scoring": proto.describe(), "normalizer": normalizer_name(protocol),
               "note": "saved predictions scored again, the model not run; clips the run's own protocol "
                       f"({was}) dropped before inference have no prediction and are not scored",
               "sets": sets, **combine_sets(sets, protocol)}
    table = markdown_table(["set", "WER %", "RTFx", "clips", "audio s"],
                           [(k, v["wer"], v["rtfx"], v["items"], v["audio_seconds"]) for k, v in sets.items()])
    md = (f"# ASR rescored with {protocol}: {summary['model']}\n\n{proto.description}; scoring reproduces "
          f"{proto.describe()['reproduces']}.\n\n{table}\n**Average WER: {summary['average_wer']}**; composite RTFx "
          f"{summary['composite_rtfx']} ({summary['rtfx_note']})\n\n- normaliser: {summary['normalizer']}\n"
          f"- {summary['note']}\n")
    return summary, md


def _vqa(run_dir: Path, record: dict) -> tuple[dict, str]:
    from .anls import anls, mean_anls
    from .chartqa import accuracy_by_subset
    from .relaxed import relaxed_accuracy_any

    task = record.get("task")
    rows = _rows(run_dir / "predictions.jsonl")
    if any(r.get("answers") is None for r in rows):
        raise SourceError("predictions without ground-truth answers (a test-split run): nothing to score",
                          str(run_dir / "predictions.jsonl"))
    base = {"task": task, "rescored_from": str(run_dir), "model": record["producer"].get("model"),
            "questions": len(rows), "note": "saved predictions scored again, the model not run"}
    if task == "docvqa":
        for r in rows:
            r["anls"] = anls(r["prediction"], r["answers"])
        base["anls"] = mean_anls([r["prediction"] for r in rows], [r["answers"] for r in rows])
        return base, (f"# ANLS rescored: {base['model']}\n\n"
                      + markdown_table(["questions", "ANLS (0..1)"], [(len(rows), f"{base['anls']:.4f}")]))
    for r in rows:
        r["correct"] = relaxed_accuracy_any(r["prediction"], r["answers"])
    base["scores"] = accuracy_by_subset(rows)
    return base, (f"# Relaxed accuracy rescored: {base['model']}\n\n"
                  + markdown_table(["subset", "relaxed accuracy (0..1)", "questions"],
                                   [(k, f"{v['accuracy']:.4f}", v["questions"]) for k, v in base["scores"].items()]))


def rescore(run_dir, protocol: str | None = None, overwrite: bool = False) -> tuple[dict, Path]:
    """Score the saved predictions in ``run_dir`` again (module docstring); returns the new summary and the
    path of its JSON file."""
    run_dir = Path(run_dir).expanduser()
    record = _record(run_dir)
    task = record.get("task")
    if task == "asr":
        protocol = protocol or DEFAULT_PROTOCOL
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown scoring protocol {protocol!r} (known: {', '.join(PROTOCOLS)})", "--protocol")
        stem = f"summary.rescored-{protocol}"
    elif task in ("docvqa", "chartqa"):
        if protocol is not None:
            raise ConfigError(f"{task} has one metric; --protocol is for ASR runs", "--protocol")
        stem = "summary.rescored"
    else:
        raise SourceError(f"{RECORD} names task {task!r}; rescoring knows asr, docvqa and chartqa", str(run_dir))
    target = run_dir / f"{stem}.json"
    if not overwrite and (target.exists() or target.with_suffix(".md").exists()):
        raise ConfigError(f"{target.name} is already there (an earlier rescore): pass --overwrite to replace it",
                          str(target))
    summary, md = _asr(run_dir, record, protocol) if task == "asr" else _vqa(run_dir, record)
    json_path, _ = write_summary(run_dir, summary, md, stem=stem)
    return summary, json_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --output-dir of an earlier molora eval run")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS),
                   help=f"ASR runs: the scoring protocol (default {DEFAULT_PROTOCOL})")
    p.add_argument("--overwrite", action="store_true", help="replace a rescored summary of the same protocol")


def main(args) -> int:
    summary, path = rescore(args.run_dir, args.protocol, args.overwrite)
    if summary["task"] == "asr":
        for name, v in summary["sets"].items():
            print(f"{name}: WER {v['wer']}  RTFx {v['rtfx']}  ({v['items']} clips)")
        print(f"average WER {summary['average_wer']} (rescored with {summary['protocol']}; the run was scored with "
              f"{summary['scored_before_with']})")
    elif summary["task"] == "docvqa":
        print(f"ANLS {summary['anls']:.4f} (0..1) over {summary['questions']} questions")
    else:
        for k, v in summary["scores"].items():
            print(f"{k}: relaxed accuracy {v['accuracy']:.4f} (0..1; {v['questions']} questions)")
    print(f"results: {path} (the run's own summary.json is unchanged)")
    return 0
