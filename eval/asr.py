"""`molora eval asr`: WER and RTFx on the Open ASR leaderboard sets (or any ASR data), leaderboard style.

    molora eval asr --model DIR --sets open-asr --output-dir runs/asr            # the classic 8 sets
    molora eval asr --model DIR --sets open-asr-2026 --output-dir runs/asr26     # the current 7 sets
    molora eval asr --model DIR --sets librispeech_test.clean,ami_test --data DATA --output-dir OUT
    molora eval asr --model DIR --manifest clips.jsonl --output-dir OUT

Per set: references whose normalised text is empty (and TED-LIUM's
``ignore_time_segment_in_scoring``) are dropped *before* inference, as the leaderboard does;
the rest are sorted longest first and decoded greedily in batches; feature extraction +
generate + decode are timed per batch (dataset decoding excluded) after one warm-up batch.
``OUT/<set>.jsonl`` receives one leaderboard-format row per clip (``id``, ``audio_filepath``,
``duration``, ``time``, ``text``, ``pred_text``), appended and flushed per batch; a re-run
skips clips already there. ``OUT/summary.json`` / ``summary.md``: per-set WER (corpus level,
rounded to 2 decimals), the unweighted mean of the rounded WERs, per-set and composite RTFx,
batch size, dtype, device, normaliser version and protocol.

Chunked sets (rows with ``chunk_index`` and ``parent_id``, the current protocol's Earnings22):
predictions are joined per ``parent_id`` in ``chunk_index`` order before scoring; the reference
is the chunks' common text when every chunk carries the whole call's text, else the chunk texts
joined in the same order.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from molora.errors import ConfigError

from .data import Item, SourceError, column_names, dataset_items, encoded_audio_seconds, first_column, load_rows, \
    manifest_rows, media_of, unique_key
from .normalizer import NORMALIZER_VERSION
from .report import ResultFile, markdown_table, run_settings, write_summary
from .wer import average_wer, is_scored_reference, rtfx, wer_details

__all__ = ["AsrSet", "PROTOCOLS", "resolve_sets", "prepare_sets", "asr_items", "score_rows", "evaluate_asr",
           "add_arguments", "main", "ASR_PROMPT", "EARNINGS22_PROMPT"]

ASR_PROMPT = "Transcribe the audio clip into text."
EARNINGS22_PROMPT = "Transcribe the audio clip to English text."   # the classic scripts' Earnings22 prompt
LENGTH_COLUMNS = ("audio_length_s", "duration", "audio_duration")
ID_COLUMNS = ("id", "audio_id", "segment_id", "utterance_id")


@dataclass(frozen=True)
class AsrSet:
    name: str
    dataset: str | None = None          # hub id, or local dataset path (source "data")
    config: str | None = None
    split: str = "test"
    prompt: str = ASR_PROMPT
    source: str = "hub"                 # "hub" | "data" | "manifest"
    path: str | None = None             # local dataset or manifest path


@dataclass(frozen=True)
class Protocol:
    name: str
    dataset: str
    description: str
    sets: tuple[AsrSet, ...]


def _sets(dataset: str, pairs, earnings_prompt: bool) -> tuple[AsrSet, ...]:
    return tuple(AsrSet(f"{c}_{s}", dataset, c, s,
                        EARNINGS22_PROMPT if earnings_prompt and c.startswith("earnings22") else ASR_PROMPT)
                 for c, s in pairs)


_ESB = "hf-audio/esb-datasets-test-only-sorted"
_OASR = "hf-audio/open-asr-leaderboard"
PROTOCOLS: dict[str, Protocol] = {
    "open-asr": Protocol(
        "open-asr", _ESB, "Open ASR leaderboard, classic protocol (8 ESB sets; the published "
        "Phi-4-multimodal and Whisper numbers)",
        _sets(_ESB, [("ami", "test"), ("earnings22", "test"), ("gigaspeech", "test"), ("librispeech", "test.clean"),
                     ("librispeech", "test.other"), ("spgispeech", "test"), ("tedlium", "test"),
                     ("voxpopuli", "test")], earnings_prompt=True)),
    "open-asr-2026": Protocol(
        "open-asr-2026", _OASR, "Open ASR leaderboard, current protocol (7 sets, TED-LIUM dropped, "
        "chunked Earnings22); averages are not comparable with the classic protocol",
        _sets(_OASR, [("ami_cleaned", "test"), ("gigaspeech_cleaned", "test"), ("voxpopuli_cleaned_aa", "test"),
                      ("librispeech", "test.clean"), ("librispeech", "test.other"), ("spgispeech", "test"),
                      ("earnings22_cleaned_aa_chunked", "test")], earnings_prompt=False)),
}


# ----------------------------------------------------------------------------------------
# which sets
# ----------------------------------------------------------------------------------------
def resolve_sets(sets: str | None = None, *, protocol: str | None = None, data: str | None = None,
                 manifests: list[str] | None = None, split: str = "test", config: str | None = None,
                 prompt: str | None = None) -> tuple[str, bool, list[AsrSet]]:
    """``(protocol label, complete protocol?, sets)`` from the CLI choices (see ``add_arguments``)."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})", "--protocol")
    if manifests:
        if sets or data:
            raise ConfigError("--manifest cannot be combined with --sets or --data", "--manifest")
        out = []
        for m in manifests:
            out.append(AsrSet(Path(m).stem, source="manifest", path=str(m), prompt=prompt or ASR_PROMPT))
        _check_unique(out)
        return "custom", False, out
    if data and not sets:
        p = Path(data).expanduser()
        name = p.stem if p.is_file() else p.name
        return "custom", False, [AsrSet(name, str(p), config, split, prompt or ASR_PROMPT, "data", str(p))]
    tokens = [t.strip() for t in (sets or "open-asr").split(",") if t.strip()]
    names: list[str] = []
    for t in tokens:
        if t in PROTOCOLS:
            if protocol is not None and protocol != t:
                raise ConfigError(f"--sets {t} and --protocol {protocol} disagree", "--sets")
            protocol = t
            names += [s.name for s in PROTOCOLS[t].sets]
        else:
            names.append(t)
    proto = PROTOCOLS[protocol or "open-asr"]
    known = {s.name: s for s in proto.sets}
    unknown = [n for n in names if n not in known]
    if unknown:
        other = [f"{n!r} is a set of {p.name} (add --protocol {p.name})" for n in unknown
                 for p in PROTOCOLS.values() if p is not proto and any(s.name == n for s in p.sets)]
        raise ConfigError(
            f"unknown set(s) {', '.join(map(repr, unknown))} for protocol {proto.name}. Known sets: "
            f"{', '.join(known)}; protocols: {', '.join(PROTOCOLS)}" + (f" ({'; '.join(other)})" if other else "")
            + ". For your own data use --data PATH or --manifest FILE.jsonl", "--sets")
    names = list(dict.fromkeys(names))
    chosen = [known[n] for n in names]
    if prompt:
        chosen = [replace(s, prompt=prompt) for s in chosen]
    if data:
        root = Path(data).expanduser()
        chosen = [replace(s, source="data", path=str(root / s.name)) for s in chosen]
    complete = set(names) == set(known)
    label = proto.name if complete else f"{proto.name} (subset: {', '.join(names)})"
    return label, complete, chosen


def _check_unique(sets: list[AsrSet]) -> None:
    seen = set()
    for s in sets:
        if s.name in seen:
            raise ConfigError(f"two sources are both named {s.name!r} (their results would share one file)", s.path)
        seen.add(s.name)


def _download_hint(s: AsrSet) -> str:
    cfg = f"'{s.config}', " if s.config else ""
    return (f"Set {s.name} comes from the Hugging Face dataset {s.dataset} (config {s.config}, split {s.split}). "
            "Download it where there is network, e.g. `python -c \"import datasets; datasets.load_dataset("
            f"'{s.dataset}', {cfg}split='{s.split}').save_to_disk('DIR/{s.name}')\"`, then run with "
            f"`--data DIR --sets {s.name}` (DIR holds one saved dataset per set, named after the set)")


# ----------------------------------------------------------------------------------------
# items
# ----------------------------------------------------------------------------------------
def asr_items(s: AsrSet, limit: int | None = None) -> tuple[list[Item], int]:
    """``(items, dropped)`` of one set: clips with a scored reference, and how many were dropped
    (empty after normalisation / TED-LIUM ignore) before inference."""
    if s.source == "manifest":
        return _manifest_items(s, limit)
    from molora.stages.hf_datasets import TEXT_FALLBACKS

    if s.source == "data":
        if not Path(s.path).expanduser().exists():
            raise SourceError(f"not found (set {s.name}). --data DIR must hold one dataset per set, named after "
                              f"the set. " + (_download_hint(s) if s.dataset and s.dataset != s.path else ""), s.path)
        rows, name = load_rows(s.path, split=s.split, config=None if s.dataset != s.path else s.config,
                               media_column="audio", limit=limit)
    else:
        rows, name = load_rows(s.dataset, split=s.split, config=s.config, media_column="audio", limit=limit,
                               hint=_download_hint(s))
    cols = column_names(rows)
    text_col = first_column(cols, TEXT_FALLBACKS)
    if len(rows) and text_col is None:
        raise SourceError(f"no transcript column (tried {list(TEXT_FALLBACKS)}); columns: {cols}", name)
    len_col, id_col = first_column(cols, LENGTH_COLUMNS), first_column(cols, ID_COLUMNS)
    seen: dict[str, int] = {}
    dropped = 0

    def make(row, i):
        nonlocal dropped
        text = row[text_col]
        if not isinstance(text, str):
            raise SourceError(f"transcript must be a string, got {text!r}", f"{name}:{i}")
        if not is_scored_reference(text):
            dropped += 1
            return None
        key = unique_key(row[id_col] if id_col else i, seen)
        duration = float(row[len_col]) if len_col and row[len_col] is not None else \
            encoded_audio_seconds(rows[i]["audio"])
        meta = {"id": key, "audio_filepath": key, "duration": duration, "text": text}
        if "chunk_index" in row and row.get("parent_id") is not None:
            meta.update(chunk_index=int(row["chunk_index"]), parent_id=str(row["parent_id"]))
        return {"key": key, "prompt": s.prompt, "meta": meta, "length": duration}

    items = dataset_items(rows, name, media="audio", media_column="audio", make=make)
    return items, dropped


def _manifest_items(s: AsrSet, limit: int | None) -> tuple[list[Item], int]:
    import soundfile as sf

    from molora.encoders.audio_features import load_audio

    pairs = manifest_rows(s.path)
    if limit is not None:
        pairs = pairs[:limit]
    items, dropped, seen = [], 0, {}
    for sample, raw in pairs:
        if sample.kind != "asr":
            raise SourceError(f"an ASR manifest row needs 'audio' and 'text' (this row is a {sample.kind} row)", sample.source)
        text = raw["text"]
        if not is_scored_reference(text):
            dropped += 1
            continue
        path = media_of(sample, "audio")
        key = unique_key(raw.get("id", raw["audio"]), seen)
        duration = raw.get("duration")
        if duration is None:
            try:
                duration = float(sf.info(path).duration)
            except Exception:  # noqa: BLE001 - load_audio reports the file when it is decoded
                duration = 0.0
        meta = {"id": key, "audio_filepath": raw["audio"], "duration": float(duration), "text": text}
        items.append(Item(key, raw.get("prompt") or s.prompt, "audio", lambda p=path: load_audio(p), meta,
                          float(duration)))
    return items, dropped


# ----------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------
def join_chunks(rows: list[dict]) -> tuple[list[str], list[str]]:
    """References and hypotheses for scoring; chunked rows are joined per ``parent_id`` (module doc)."""
    refs, hyps, groups = [], [], {}
    for r in rows:
        if "chunk_index" in r and r.get("parent_id") is not None:
            groups.setdefault(str(r["parent_id"]), []).append(r)
        else:
            refs.append(r["text"])
            hyps.append(r["pred_text"])
    for chunks in groups.values():
        chunks = sorted(chunks, key=lambda r: int(r["chunk_index"]))
        texts = [r["text"] for r in chunks]
        refs.append(texts[0] if len(set(texts)) == 1 else " ".join(texts))
        hyps.append(" ".join(r["pred_text"] for r in chunks if r["pred_text"]))
    return refs, hyps


def score_rows(rows: list[dict]) -> dict:
    """Per-set numbers from leaderboard-format rows: WER (rounded to 2 and unrounded), its counts,
    audio seconds, timed seconds, RTFx (rounded to 2)."""
    refs, hyps = join_chunks(rows)
    d = wer_details(refs, hyps)
    audio = sum(float(r["duration"]) for r in rows)
    spent = sum(float(r["time"]) for r in rows)
    return {"wer": round(d["wer"], 2), "wer_unrounded": d["wer"],
            **{k: d[k] for k in ("substitutions", "deletions", "insertions", "hits", "reference_words")},
            "dropped_at_scoring": d["dropped"], "items": len(rows), "scored_utterances": len(refs),
            "audio_seconds": round(audio, 3), "inference_seconds": round(spent, 6),
            "rtfx": round(rtfx(audio, spent), 2) if spent > 0 else None}


def row_of(item: Item, prediction: str, seconds: float) -> dict:
    m = item.meta
    row = {"id": m["id"], "audio_filepath": m["audio_filepath"], "duration": m["duration"], "time": seconds,
           "text": m["text"], "pred_text": prediction}
    for k in ("chunk_index", "parent_id"):
        if k in m:
            row[k] = m[k]
    return row


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------
def prepare_sets(sets: list[AsrSet], limit: int | None = None) -> list[tuple[AsrSet, list[Item], int]]:
    """``[(set, items, dropped)]``: every source opened and listed (no audio decoded) before any
    model is loaded, so an unreachable set fails fast."""
    _check_unique(sets)
    return [(s, *asr_items(s, limit)) for s in sets]


def evaluate_asr(model, processor, sets: list[AsrSet], output_dir, *, protocol: str = "custom",
                 complete: bool = False, batch_size: int = 16, max_new_tokens: int = 128, limit: int | None = None,
                 warmup_batches: int = 1, model_name: str | None = None, dtype: str | None = None,
                 device: str | None = None, prepared: list | None = None) -> dict:
    """Run and score ``sets``; writes ``OUT/<set>.jsonl`` and ``OUT/summary.{json,md}``; returns the summary.
    ``prepared``: the output of ``prepare_sets(sets, limit)`` when the caller has it already."""
    from .generate import Generator, run_items

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepared if prepared is not None else prepare_sets(sets, limit)
    generator = Generator(model, processor, max_new_tokens)
    per_set: dict[str, dict] = {}
    for s, items, dropped in prepared:
        results = ResultFile(out / f"{s.name}.jsonl", key_field="id")
        done_now = run_items(items, results, generator, make_row=row_of, batch_size=batch_size,
                             warmup_batches=warmup_batches, desc=s.name, sort_by_length=True)
        rows = results.select([it.key for it in items])
        entry = {"manifest": results.path.name, "source": s.path or s.dataset, "config": s.config, "split": s.split,
                 "prompt": s.prompt, "dropped_before_inference": dropped, "generated_this_run": done_now}
        if rows:
            entry.update(score_rows(rows))
        per_set[s.name] = entry
    scored = {k: v for k, v in per_set.items() if "wer" in v}
    audio = sum(v["audio_seconds"] for v in scored.values())
    spent = sum(v["inference_seconds"] for v in scored.values())
    summary = {
        "task": "asr",
        "protocol": protocol,
        "protocol_description": PROTOCOLS[protocol.split(" ")[0]].description if protocol.split(" ")[0] in PROTOCOLS
        else "custom data",
        "complete_protocol": complete,
        "model": model_name,
        "normalizer": NORMALIZER_VERSION,
        "metric": "WER % per set, corpus level (sum S+D+I / sum reference words x100), rounded to 2 decimals; "
                  "average = unweighted mean of the rounded per-set WERs",
        "settings": run_settings({"batch_size": batch_size, "dtype": str(dtype), "device": str(device),
                                  "max_new_tokens": max_new_tokens, "decoding": "greedy",
                                  "warmup_batches": warmup_batches, "limit": limit}),
        "timing": "per batch: feature extraction + generate + decode (dataset decoding excluded), after "
                  f"{warmup_batches} warm-up batch(es); RTFx = audio seconds / timed seconds; composite = all audio "
                  "/ all time",
        "sets": per_set,
        "average_wer": average_wer([v["wer"] for v in scored.values()]) if scored else None,
        "composite_rtfx": round(rtfx(audio, spent), 2) if spent > 0 else None,
        "audio_seconds": round(audio, 3),
        "inference_seconds": round(spent, 6),
    }
    write_summary(out, summary, _markdown(summary))
    return summary


def _markdown(s: dict) -> str:
    st = s["settings"]
    rows = [(name, v.get("wer"), v.get("rtfx"), v.get("items", 0), v.get("dropped_before_inference", 0),
             v.get("audio_seconds")) for name, v in s["sets"].items()]
    note = "" if s["complete_protocol"] else \
        "\nThe average covers only the sets above; it is not a leaderboard average.\n"
    return (f"# ASR evaluation: {s['model']}\n\n"
            f"Protocol: **{s['protocol']}**: {s['protocol_description']}\n\n"
            + markdown_table(["set", "WER %", "RTFx", "clips", "dropped", "audio s"], rows)
            + f"\n**Average WER: {s['average_wer']}** (unweighted mean of the rounded per-set WERs); "
              f"composite RTFx {s['composite_rtfx']}\n{note}\n"
            f"- normaliser: {s['normalizer']}\n"
            f"- batch size {st['batch_size']}, dtype {st['dtype']}, device {st['device']} ({st['device_name']}), "
            f"greedy, max_new_tokens {st['max_new_tokens']}\n"
            f"- timing: {s['timing']}\n")


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="checkpoint directory, hub id or preset name")
    g.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g = p.add_argument_group("what to evaluate (default: --sets open-asr from the hub)")
    g.add_argument("--sets", help="open-asr (classic 8 sets), open-asr-2026 (current 7), or comma-separated set "
                                  "names, e.g. librispeech_test.clean,ami_test")
    g.add_argument("--protocol", choices=sorted(PROTOCOLS), help="protocol the set names of --sets belong to "
                                                                 "(default open-asr)")
    g.add_argument("--data", help="local data: with --sets, a directory holding one saved dataset per set (DIR/<set>); "
                                  "without, one dataset (save_to_disk dir, parquet/JSON file or directory)")
    g.add_argument("--split", default="test", help="split of a single --data dataset (default test)")
    g.add_argument("--config", help="config of a single --data dataset")
    g.add_argument("--manifest", action="append", help="ASR JSONL manifest ({\"audio\": PATH, \"text\": ...}); "
                                                       "repeat for several sets")
    g = p.add_argument_group("how")
    g.add_argument("--output-dir", required=True, help="per-set JSONL manifests and summary.json/.md go here; "
                                                       "re-running resumes")
    g.add_argument("--batch-size", type=int, default=16, help="clips per batch (published Phi-4-multimodal runs: "
                                                              "128-160 on one GPU)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--prompt", help="override the prompt (default: the reference prompt of each set)")
    g.add_argument("--limit", type=int, help="evaluate only the first N clips of each set (smoke runs)")
    g.add_argument("--warmup-batches", type=int, default=1, help="untimed batches before timing (default 1)")


def main(args) -> int:
    from .generate import load_model_and_processor

    protocol, complete, sets = resolve_sets(args.sets, protocol=args.protocol, data=args.data,
                                            manifests=args.manifest, split=args.split, config=args.config,
                                            prompt=args.prompt)
    prepared = prepare_sets(sets, args.limit)
    model, processor, device, dtype = load_model_and_processor(args.model, args.dtype, args.device)
    summary = evaluate_asr(model, processor, sets, args.output_dir, protocol=protocol, complete=complete,
                           batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, limit=args.limit,
                           warmup_batches=args.warmup_batches, model_name=args.model,
                           dtype=str(dtype).replace("torch.", ""), device=device, prepared=prepared)
    for name, v in summary["sets"].items():
        print(f"{name}: WER {v.get('wer')}  RTFx {v.get('rtfx')}  ({v.get('items', 0)} clips)")
    print(f"average WER {summary['average_wer']} ({summary['protocol']}); composite RTFx {summary['composite_rtfx']}")
    print(f"results: {Path(args.output_dir) / 'summary.md'}")
    return 0
