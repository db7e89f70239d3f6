"""`molora eval asr`: WER and RTFx on the Open ASR leaderboard sets (or any ASR data), leaderboard style.

    molora eval asr --model DIR --sets open-asr-2026 --output-dir runs/asr26     # the current 7 sets (default)
    molora eval asr --model DIR --sets open-asr --output-dir runs/asr            # the classic 8 sets
    molora eval asr --model DIR --sets librispeech_test.clean,ami_test --data DATA --output-dir OUT
    molora eval asr --model DIR --manifest clips.jsonl --output-dir OUT [--protocol open-asr]

Scoring follows a protocol (``molora.eval.protocols``): ``--sets X`` scores with X's protocol (a set
name that both protocols have, like ``librispeech_test.clean``, takes ``--protocol``, default
``open-asr-2026``); your own data (``--manifest`` / ``--data``) is scored with ``--protocol``.

Per set: references whose normalised text is empty (and TED-LIUM's
``ignore_time_segment_in_scoring``) are dropped *before* inference, as the leaderboard does;
the rest are sorted longest first and decoded greedily in batches; feature extraction +
generate + decode are timed per batch (dataset decoding excluded) after one warm-up batch.
``OUT/<set>.jsonl`` receives one leaderboard-format row per clip (``id``, ``audio_filepath``,
``duration``, ``time``, ``text``, ``pred_text``; for manifests ``audio_filepath`` is the clip's
absolute path, so the file reads back as a NeMo-style manifest with ``--allow-outside-root``, since the
clips lie outside OUT), appended and flushed per batch; a
re-run skips clips already there and never writes a clip twice. ``OUT/run.json`` records the model
and settings that produced them: a run of another model or with other settings is refused unless
``--overwrite``. A clip that cannot be used (missing, corrupt, NaN samples, a symlink loop) is
skipped and listed (``--strict`` stops instead); a set none of whose clips could be scored is an
error (exit 2) naming it and the first reasons.
``OUT/summary.json`` / ``summary.md``: per-set WER (corpus level, rounded to 2 decimals), the
unweighted mean of the rounded WERs, per-set and composite RTFx (with how many seconds of audio it
was measured over; under 60 s it is flagged as noisy), batch size, dtype, device, and the protocol
with the exact code it reproduces. ``molora eval rescore OUT --protocol P`` scores the saved
predictions again under another protocol without running the model.

Chunked sets (rows with ``chunk_index`` and ``parent_id``, the current protocol's Earnings22):
predictions are joined per ``parent_id`` in ``chunk_index`` order (stripped, empty ones left out)
before scoring, against the call's transcript (the leaderboard's ``merge_chunked_manifest``).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from molora.errors import ConfigError
from molora.prompts import ASR_PROMPT

from .data import Item, SourceError, column_names, dataset_items, encoded_audio_seconds, first_column, load_rows, \
    manifest_rows, media_of, row_name, unique_key
from .identity import RunRecord, producer_of
from .normalizer import normalizer_name
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS, AsrSet, get_protocol
from .report import ResultFile, markdown_table, run_settings, skip_fields, skip_note, write_summary
from .skips import SkipList, nothing_scored, print_skips
from .wer import average_wer, is_scored_reference, rtfx, wer_details

__all__ = ["AsrSet", "PROTOCOLS", "Selection", "resolve_sets", "prepare_sets", "asr_items", "score_rows",
           "join_chunks", "attach_call_transcripts", "save_chunked_set", "evaluate_asr", "add_arguments", "main"]

LENGTH_COLUMNS = ("audio_length_s", "duration", "audio_duration")
ID_COLUMNS = ("id", "audio_id", "segment_id", "utterance_id")


class Selection(NamedTuple):
    label: str                  # what the summary calls the run ("open-asr-2026", "open-asr (subset: ...)", "custom")
    complete: bool              # every set of the protocol
    sets: list[AsrSet]
    protocol: str               # the scoring protocol


# ----------------------------------------------------------------------------------------
# which sets
# ----------------------------------------------------------------------------------------
def _owners(name: str) -> set[str]:
    return {p.name for p in PROTOCOLS.values() if any(s.name == name for s in p.sets)}


def resolve_sets(sets: str | None = None, *, protocol: str | None = None, data: str | None = None,
                 manifests: list[str] | None = None, split: str = "test", config: str | None = None,
                 prompt: str | None = None) -> Selection:
    """The sets to run and the protocol that scores them, from the CLI choices (see ``add_arguments``)."""
    if protocol is not None:
        get_protocol(protocol)
    if manifests:
        if sets or data:
            raise ConfigError("--manifest cannot be combined with --sets or --data", "--manifest")
        out = [AsrSet(name, source="manifest", path=str(m), prompt=prompt or ASR_PROMPT)
               for name, m in zip(set_names(manifests), manifests)]
        _check_unique(out)
        return Selection("custom", False, out, protocol or DEFAULT_PROTOCOL)
    if data and not sets:
        p = Path(data).expanduser()
        name = p.stem if p.is_file() else p.name
        return Selection("custom", False, [AsrSet(name, str(p), config, split, prompt or ASR_PROMPT, "data", str(p))],
                         protocol or DEFAULT_PROTOCOL)
    tokens = [t.strip() for t in (sets or protocol or DEFAULT_PROTOCOL).split(",") if t.strip()]
    candidates = set(PROTOCOLS) if protocol is None else {protocol}
    names: list[str] = []
    unknown = []
    for t in tokens:
        owners = {t} if t in PROTOCOLS else _owners(t)
        if not owners:
            unknown.append(t)
            continue
        if not owners & candidates:
            raise ConfigError(f"{t!r} belongs to protocol {', '.join(sorted(owners))}, not to "
                              f"{', '.join(sorted(candidates))}: sets of two protocols cannot be scored together",
                              "--sets")
        candidates &= owners
        names += [s.name for s in PROTOCOLS[t].sets] if t in PROTOCOLS else [t]
    if unknown:
        known = "; ".join(f"{p.name}: {', '.join(s.name for s in p.sets)}" for p in PROTOCOLS.values())
        raise ConfigError(f"unknown set(s) {', '.join(map(repr, unknown))}. Protocols and their sets: {known}. "
                          "For your own data use --data PATH or --manifest FILE.jsonl", "--sets")
    proto = PROTOCOLS[DEFAULT_PROTOCOL if DEFAULT_PROTOCOL in candidates else sorted(candidates)[0]]
    known_sets = {s.name: s for s in proto.sets}
    names = list(dict.fromkeys(names))
    chosen = [known_sets[n] for n in names]
    if prompt:
        chosen = [replace(s, prompt=prompt) for s in chosen]
    if data:
        root = Path(data).expanduser()
        chosen = [replace(s, source="data", path=str(root / s.name)) for s in chosen]
    complete = set(names) == set(known_sets)
    label = proto.name if complete else f"{proto.name} (subset: {', '.join(names)})"
    return Selection(label, complete, chosen, proto.name)


def set_names(paths: list[str]) -> list[str]:
    """One set name per manifest path (its result file is ``OUT/<name>.jsonl``): the file's stem, with as many
    of its folders in front (``a_clips``, ``b_clips``) as it takes to tell manifests sharing a name apart. The
    same file given twice is an error."""
    import os

    full = [Path(os.path.abspath(Path(p).expanduser())) for p in paths]
    twice = sorted({str(f) for f in full if full.count(f) > 1})
    if twice:
        raise ConfigError(f"{twice[0]} is given twice", "--manifest")

    def name(f: Path, depth: int) -> str:
        folders = [x for x in f.parent.parts[len(f.parent.parts) - depth:] if x != f.parent.anchor] if depth else []
        return "_".join([*folders, f.stem if depth <= len(f.parent.parts) else f.name.replace(".", "_")])

    depth = [0] * len(full)
    names = [name(f, 0) for f in full]
    while len(set(names)) < len(names):
        clash = {n for n in names if names.count(n) > 1}
        depth = [d + (n in clash) for d, n in zip(depth, names)]
        names = [name(f, d) for f, d in zip(full, depth)]
    return names


def _check_unique(sets: list[AsrSet]) -> None:
    seen = set()
    for s in sets:
        if s.name in seen:
            raise ConfigError(f"two sources are both named {s.name!r} (their results would share one file)", s.path)
        seen.add(s.name)


def _download_hint(s: AsrSet) -> str:
    if s.transcripts:
        return (f"Set {s.name} is the leaderboard's chunked set {s.dataset} (split {s.split}) with one transcript "
                f"per call in {s.transcripts}. Where there is network, save it with the transcripts attached: "
                "`python -c \"import molora.eval.asr as a; a.save_chunked_set('DIR')\"`, then run with "
                f"`--data DIR --sets {s.name}`")
    cfg = f"'{s.config}', " if s.config else ""
    return (f"Set {s.name} comes from the Hugging Face dataset {s.dataset} (config {s.config}, split {s.split}). "
            "Download it where there is network, e.g. `python -c \"import datasets; datasets.load_dataset("
            f"'{s.dataset}', {cfg}split='{s.split}').save_to_disk('DIR/{s.name}')\"`, then run with "
            f"`--data DIR --sets {s.name}` (DIR holds one saved dataset per set, named after the set)")


# ----------------------------------------------------------------------------------------
# the chunked Earnings22 set
# ----------------------------------------------------------------------------------------
def attach_call_transcripts(chunks, calls, audio_root: str | Path, audio_dir: str = "audio"):
    """The leaderboard's chunked set made whole: each chunk row of ``chunks`` (``file_name``, ``parent_id``,
    ``chunk_index``) gets ``text`` = its call's transcript from ``calls`` (rows ``id`` + transcript) and
    ``audio`` = ``audio_root/audio_dir/file_name``. Both are ``datasets.Dataset``; returns a Dataset with
    an ``Audio`` column. A chunk whose call has no transcript is an error naming the call ids."""
    import datasets

    from molora.data.hf_datasets import TEXT_FALLBACKS

    text_col = first_column(calls.column_names, TEXT_FALLBACKS)
    if text_col is None or "id" not in calls.column_names:
        raise SourceError(f"the transcripts need 'id' and a transcript column; columns: {calls.column_names}", "calls")
    text = dict(zip(calls["id"], calls[text_col]))
    missing = sorted(set(chunks["parent_id"]) - set(text))
    if missing:
        raise SourceError(f"no transcript for call id(s) {missing[:10]}: the chunked set and its transcripts are "
                          "out of sync", "chunks")
    root = Path(audio_root) / audio_dir
    out = chunks.map(lambda r: {"audio": str(root / r["file_name"]), "text": text[r["parent_id"]]},
                     load_from_cache_file=False)
    return out.cast_column("audio", datasets.Audio(decode=False))


def _chunked_from_hub(s: AsrSet):
    """The chunked set from the hub, as the leaderboard loads it: chunk metadata, the calls' transcripts,
    and the chunk audio downloaded from the set's ``audio/`` folder (network needed)."""
    import datasets
    from huggingface_hub import snapshot_download

    calls = datasets.load_dataset(s.transcripts, split=s.split)
    chunks = datasets.load_dataset(s.dataset, split=s.split)
    if "audio" in chunks.column_names:
        chunks = chunks.remove_columns("audio")
    root = snapshot_download(repo_id=s.dataset, repo_type="dataset", allow_patterns=["audio/*"])
    return attach_call_transcripts(chunks, calls, root)


def save_chunked_set(directory: str | Path, name: str = "earnings22_cleaned_aa_chunked_test") -> Path:
    """Download the current protocol's chunked Earnings22 (needs network) and save it, transcripts attached,
    as ``directory/<name>`` for ``--data directory --sets <name>``."""
    s = next(s for s in PROTOCOLS["open-asr-2026"].sets if s.name == name)
    out = Path(directory).expanduser() / name
    _chunked_from_hub(s).save_to_disk(str(out))
    return out


# ----------------------------------------------------------------------------------------
# items
# ----------------------------------------------------------------------------------------
def asr_items(s: AsrSet, limit: int | None = None, *, protocol: str = DEFAULT_PROTOCOL,
              allow_outside_root: bool = False, skips: SkipList | None = None) -> tuple[list[Item], int]:
    """``(items, dropped)`` of one set: clips with a scored reference, and how many were dropped
    (empty after ``protocol``'s normalisation / TED-LIUM ignore) before inference. Rows with unusable
    values go to ``skips`` (or raise when it is None)."""
    skips = skips if skips is not None else SkipList(strict=True)
    if s.source == "manifest" or (s.source == "data" and _is_manifest_file(s.path)):
        return _manifest_items(s, limit, protocol, allow_outside_root, skips)
    from molora.data.hf_datasets import TEXT_FALLBACKS, data_folder, rebased

    if s.source == "data":
        if not Path(s.path).expanduser().exists():
            raise SourceError(f"not found (set {s.name}). --data DIR must hold one dataset per set, named after "
                              f"the set. " + (_download_hint(s) if s.dataset and s.dataset != s.path else ""), s.path)
        rows, name = load_rows(s.path, split=s.split, config=None if s.dataset != s.path else s.config,
                               media_column="audio", limit=limit)
    elif s.transcripts:
        try:
            rows, name = _chunked_from_hub(s), s.dataset
        except Exception as e:  # noqa: BLE001 - offline, hub unreachable ...
            raise SourceError(f"cannot load it ({type(e).__name__}: {e}). {_download_hint(s)}", s.dataset) from e
        if limit is not None and limit < len(rows):
            rows = rows.select(range(limit))
    else:
        rows, name = load_rows(s.dataset, split=s.split, config=s.config, media_column="audio", limit=limit,
                               hint=_download_hint(s))
    if not len(rows):
        raise SourceError(f"the dataset holds no rows (split {s.split!r})", name)
    cols = column_names(rows)
    text_col = first_column(cols, TEXT_FALLBACKS)
    if text_col is None:
        raise SourceError(f"no transcript column (tried {list(TEXT_FALLBACKS)}); columns: {cols}", name)
    len_col, id_col = first_column(cols, LENGTH_COLUMNS), first_column(cols, ID_COLUMNS)
    seen: dict[str, int] = {}
    dropped = 0
    base = data_folder(name)

    def make(row, i):
        nonlocal dropped
        text = row[text_col]
        if not isinstance(text, str):
            raise SourceError(f"transcript must be a string, got {text!r}", row_name(name, i))
        if not is_scored_reference(text, protocol=protocol):
            dropped += 1
            return None
        key = unique_key(row[id_col] if id_col else i, seen)
        duration = float(row[len_col]) if len_col and row[len_col] is not None else \
            encoded_audio_seconds(rebased(rows[i]["audio"], base))
        meta = {"id": key, "audio_filepath": key, "duration": duration, "text": text}
        if "chunk_index" in row and row.get("parent_id") is not None:
            meta.update(chunk_index=int(row["chunk_index"]), parent_id=str(row["parent_id"]))
        return {"key": key, "prompt": s.prompt, "meta": meta, "length": duration}

    items = dataset_items(rows, name, media="audio", media_column="audio", make=make, skips=skips)
    return items, dropped


def _is_manifest_file(path: str | None) -> bool:
    """A ``.jsonl`` file given as ``--data`` is read as a manifest (as ``molora eval docvqa`` reads one), so its
    media resolve against its own folder like ``--manifest``'s."""
    p = Path(path or "").expanduser()
    return p.suffix.lower() == ".jsonl" and p.is_file()


def _manifest_items(s: AsrSet, limit: int | None, protocol: str, allow_outside_root: bool,
                    skips: SkipList) -> tuple[list[Item], int]:
    import soundfile as sf

    from molora.data.manifest import AUDIO_KEYS
    from molora.encoders.audio_features import load_audio

    before = len(skips)
    pairs = manifest_rows(s.path, allow_outside_root=allow_outside_root, skips=skips)
    if not pairs and len(skips) == before:
        raise SourceError("the manifest holds no rows", str(Path(s.path).expanduser().resolve()))
    if limit is not None:
        pairs = pairs[:limit]
    items, dropped, seen = [], 0, {}
    for sample, raw in pairs:
        if sample.kind != "asr":
            raise SourceError(f"an ASR manifest row needs 'audio' (or NeMo's 'audio_filepath') and 'text' (this "
                              f"row is a {sample.kind} row)", sample.source)
        text = raw["text"]
        if not is_scored_reference(text, protocol=protocol):
            dropped += 1
            continue
        path = media_of(sample, "audio")
        key = unique_key(raw.get("id", next(raw[k] for k in AUDIO_KEYS if k in raw)), seen)
        duration = raw.get("duration")
        if duration is None:
            try:
                duration = float(sf.info(path).duration)
            except Exception:  # noqa: BLE001 - load_audio reports the file when it is decoded
                duration = 0.0
        # the resolved path: the result file reads back as a manifest (NeMo layout) from any folder
        meta = {"id": key, "audio_filepath": path, "duration": float(duration), "text": text}
        items.append(Item(key, raw.get("prompt") or s.prompt, "audio", lambda p=path: load_audio(p), meta,
                          float(duration), source=sample.source, media=path))
    return items, dropped


# ----------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------
def join_chunks(rows: list[dict]) -> tuple[list[str], list[str]]:
    """References and hypotheses for scoring. Chunked rows are joined per ``parent_id``: predictions in
    ``chunk_index`` order, each stripped, empty ones left out, joined by one space; the reference is the
    first chunk's text (every chunk carries its call's transcript), or, for data whose chunks carry their
    own texts, those texts joined in the same order."""
    refs, hyps, groups = [], [], {}
    for r in rows:
        if "chunk_index" in r and r.get("parent_id") is not None:
            groups.setdefault(str(r["parent_id"]), []).append(r)
        else:
            refs.append(r["text"])
            hyps.append(r["pred_text"])
    for parent in sorted(groups):
        chunks = sorted(groups[parent], key=lambda r: int(r["chunk_index"]))
        texts = [r["text"] for r in chunks]
        refs.append(texts[0] if len(set(texts)) == 1 else " ".join(texts))
        hyps.append(" ".join(p for r in chunks if (p := (r["pred_text"] or "").strip())))
    return refs, hyps


def score_rows(rows: list[dict], protocol: str = DEFAULT_PROTOCOL) -> dict:
    """Per-set numbers from leaderboard-format rows under ``protocol``: WER (rounded as the protocol rounds,
    and unrounded), its counts, audio seconds, timed seconds, RTFx (rounded as the protocol rounds)."""
    proto = get_protocol(protocol)
    refs, hyps = join_chunks(rows)
    d = wer_details(refs, hyps, protocol=protocol)
    audio = sum(float(r["duration"]) for r in rows)
    spent = sum(float(r["time"]) for r in rows)
    return {"wer": round(d["wer"], proto.wer_decimals), "wer_unrounded": d["wer"],
            **{k: d[k] for k in ("substitutions", "deletions", "insertions", "hits", "reference_words")},
            "dropped_at_scoring": d["dropped"], "items": len(rows), "scored_utterances": len(refs),
            "audio_seconds": round(audio, 3), "inference_seconds": round(spent, 6),
            "rtfx": round(rtfx(audio, spent), proto.rtfx_decimals) if spent > 0 else None}


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
def prepare_sets(sets: list[AsrSet], limit: int | None = None, *, protocol: str = DEFAULT_PROTOCOL,
                 allow_outside_root: bool = False, skips: SkipList | None = None) -> list[tuple[AsrSet, list[Item], int]]:
    """``[(set, items, dropped)]``: every source opened and listed (no audio decoded) before any
    model is loaded, so an unreachable set fails fast."""
    _check_unique(sets)
    return [(s, *asr_items(s, limit, protocol=protocol, allow_outside_root=allow_outside_root, skips=skips))
            for s in sets]


def _source_record(s: AsrSet) -> dict:
    return {"source": s.path or s.dataset, "config": s.config, "split": s.split, "prompt": s.prompt}


def evaluate_asr(model, processor, sets: list[AsrSet], output_dir, *, protocol: str = "custom",
                 complete: bool = False, batch_size: int = 16, max_new_tokens: int = 128, limit: int | None = None,
                 warmup_batches: int = 1, model_name: str | None = None, dtype: str | None = None,
                 device: str | None = None, prepared: list | None = None, scoring: str | None = None,
                 overwrite: bool = False, strict: bool = False, allow_outside_root: bool = False,
                 skips: SkipList | None = None) -> dict:
    """Run and score ``sets``; writes ``OUT/<set>.jsonl``, ``OUT/run.json`` and ``OUT/summary.{json,md}``;
    returns the summary. ``protocol``: the label of the run; ``scoring``: the protocol that scores it
    (default: the label's protocol, else ``open-asr-2026``). ``prepared`` / ``skips``: from
    ``prepare_sets(...)`` when the caller has them already. Results of another model or other settings in
    ``output_dir`` are refused unless ``overwrite``; bad clips are skipped and listed (``strict``: the first
    one stops the run)."""
    from .generate import Generator, quantization_setting, run_items

    label_protocol = protocol.split(" ")[0]
    scoring = scoring or (label_protocol if label_protocol in PROTOCOLS else DEFAULT_PROTOCOL)
    proto = get_protocol(scoring)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    skips = skips if skips is not None else SkipList(strict)
    prepared = prepared if prepared is not None else prepare_sets(sets, limit, protocol=scoring,
                                                                  allow_outside_root=allow_outside_root, skips=skips)
    producer = producer_of(model, model_name, batch_size=batch_size, max_new_tokens=max_new_tokens)
    producer["settings"]["scoring_protocol"] = scoring
    record = RunRecord(out, "asr", producer, {f"{s.name}.jsonl": _source_record(s) for s, _, _ in prepared})
    record.claim(overwrite)
    generator = Generator(model, processor, max_new_tokens)
    per_set: dict[str, dict] = {}
    for s, items, dropped in prepared:
        results = ResultFile(out / f"{s.name}.jsonl", key_field="id")
        before = len(skips)
        done_now = run_items(items, results, generator, make_row=row_of, batch_size=batch_size,
                             warmup_batches=warmup_batches, desc=s.name, sort_by_length=True, skips=skips)
        rows = results.select([it.key for it in items])
        entry = {"manifest": results.path.name, "source": s.path or s.dataset, "config": s.config, "split": s.split,
                 "prompt": s.prompt, "dropped_before_inference": dropped, "generated_this_run": done_now,
                 "skipped_this_run": len(skips) - before}
        if rows:
            entry.update(score_rows(rows, scoring))
        per_set[s.name] = entry
    summary = {
        "task": "asr",
        "protocol": protocol,
        "protocol_description": PROTOCOLS[label_protocol].description if label_protocol in PROTOCOLS
        else f"custom data, scored with the {scoring} protocol",
        "complete_protocol": complete and not skips.entries,
        "scoring": proto.describe(),
        "model": model_name,
        "normalizer": normalizer_name(scoring),
        "metric": "WER % per set, corpus level (sum S+D+I / sum reference words x100), rounded to 2 decimals; "
                  "average = unweighted mean of the rounded per-set WERs",
        "settings": run_settings({"batch_size": batch_size, "batch_sizes_used": record.batch_sizes,
                                  "dtype": str(dtype), "device": str(device), "max_new_tokens": max_new_tokens,
                                  "decoding": "greedy", "warmup_batches": warmup_batches, "limit": limit,
                                  **quantization_setting(model)}),
        "timing": "per batch: feature extraction + generate + decode (dataset decoding excluded), after "
                  f"{warmup_batches} warm-up batch(es); RTFx = audio seconds / timed seconds; composite = all audio "
                  "/ all time",
        "sets": per_set,
        **combine_sets(per_set, scoring),
        **skip_fields(skips),
    }
    write_summary(out, summary, _markdown(summary) + skip_note(skips))
    print_skips(skips.entries, str(out / "summary.json"))
    empty = [(s, dropped) for s, _, dropped in prepared if "wer" not in per_set[s.name]]
    if empty:
        s, dropped = empty[0]
        where = _source_name(s)
        err = nothing_scored(where, [e for e in skips.entries if e["source"].startswith(where)], "clip", dropped)
        if len(empty) > 1:
            err = type(err)(f"{err.reason} (and {len(empty) - 1} more set(s) with nothing scored: "
                            f"{', '.join(x.name for x, _ in empty[1:])})", err.item)
        raise err
    return summary


NOISY_AUDIO_SECONDS = 60.0


def combine_sets(per_set: dict[str, dict], scoring: str) -> dict:
    """The run's numbers from per-set scores (``score_rows``; sets without ``wer`` left out): average WER,
    composite RTFx, audio and timed seconds, and the RTFx note. Marks each set's ``rtfx_noisy``."""
    proto = get_protocol(scoring)
    scored = [v for v in per_set.values() if "wer" in v]
    audio = sum(v["audio_seconds"] for v in scored)
    spent = sum(v["inference_seconds"] for v in scored)
    for v in scored:
        v["rtfx_noisy"] = v["audio_seconds"] < NOISY_AUDIO_SECONDS
    return {"average_wer": average_wer([v["wer"] for v in scored]) if scored else None,
            "composite_rtfx": round(rtfx(audio, spent), proto.composite_rtfx_decimals) if spent > 0 else None,
            "audio_seconds": round(audio, 3), "inference_seconds": round(spent, 6), "rtfx_note": rtfx_note(audio)}


def rtfx_note(audio_seconds: float) -> str:
    """How much audio RTFx was measured over, flagged as noisy under ``NOISY_AUDIO_SECONDS``."""
    note = f"RTFx measured over {audio_seconds:.1f} s of audio"
    if audio_seconds < NOISY_AUDIO_SECONDS:
        note += (f": under {NOISY_AUDIO_SECONDS:.0f} s, timer and start-up noise can move it several-fold between "
                 "runs; time a larger set for speed numbers")
    return note


def _source_name(s: AsrSet) -> str:
    """How item sources of set ``s`` start (a manifest's absolute path, a dataset's name)."""
    if s.source == "manifest" or (s.source == "data" and _is_manifest_file(s.path)):
        from molora.data.manifest import manifest_path

        return str(manifest_path(s.path))
    return str(s.path or s.dataset)


def _markdown(s: dict) -> str:
    st = s["settings"]
    rows = [(name, v.get("wer"), v.get("rtfx"), v.get("items", 0), v.get("dropped_before_inference", 0),
             v.get("audio_seconds")) for name, v in s["sets"].items()]
    note = "" if s["complete_protocol"] else \
        "\nThe average covers only the sets above; it is not a leaderboard average.\n"
    return (f"# ASR evaluation: {s['model']}\n\n"
            f"Protocol: **{s['protocol']}**: {s['protocol_description']}\n\n"
            f"Scoring reproduces {s['scoring']['reproduces']} ({s['scoring']['wer']}).\n\n"
            + markdown_table(["set", "WER %", "RTFx", "clips", "dropped", "audio s"], rows)
            + f"\n**Average WER: {s['average_wer']}** (unweighted mean of the rounded per-set WERs); "
              f"composite RTFx {s['composite_rtfx']} ({s['rtfx_note']})\n{note}\n"
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
    g.add_argument("--quantization", choices=("int8", "int4", "nf4"),
                   help="quantise the frozen base (weight-only; adapters and projectors stay in --dtype)")
    g = p.add_argument_group(f"what to evaluate (default: --sets {DEFAULT_PROTOCOL} from the hub)")
    g.add_argument("--sets", help="open-asr-2026 (current 7 sets), open-asr (classic 8), or comma-separated set "
                                  "names, e.g. librispeech_test.clean,ami_test; scored with their protocol")
    g.add_argument("--protocol", choices=sorted(PROTOCOLS),
                   help=f"scoring protocol of --manifest / --data, and of set names both protocols have "
                        f"(default {DEFAULT_PROTOCOL})")
    g.add_argument("--data", help="local data: with --sets, a directory holding one saved dataset per set (DIR/<set>); "
                                  "without, one dataset (save_to_disk dir, parquet/JSON/CSV file or directory, an "
                                  "AudioFolder with metadata.csv; a .jsonl file is read as a manifest, as "
                                  "--manifest). Relative audio paths in it "
                                  "resolve against the file's own folder, never the working folder")
    g.add_argument("--split", default="test", help="split of a single --data dataset (default test)")
    g.add_argument("--config", help="config of a single --data dataset")
    g.add_argument("--manifest", action="append",
                   help="ASR JSONL manifest: rows {\"audio\": PATH, \"text\": ...} or NeMo / Open ASR rows "
                        "{\"audio_filepath\": PATH, \"duration\": S, \"text\": ...} (a results file of this command "
                        "reads back as one). Relative paths resolve against the manifest's own folder (never the "
                        "working folder) and must stay inside it unless --allow-outside-root. Repeat for several "
                        "sets; each writes OUT/<name>.jsonl, <name> its file name (with its folder in front when "
                        "two share a name)")
    g.add_argument("--allow-outside-root", action="store_true",
                   help="let a manifest name audio outside its own folder (the quickstart's manifests and the results "
                        "files of another --output-dir do)")
    g = p.add_argument_group("how")
    g.add_argument("--output-dir", required=True, help="per-set JSONL manifests, run.json and summary.json/.md go "
                                                       "here; re-running resumes")
    g.add_argument("--overwrite", action="store_true",
                   help="replace results in --output-dir made by another model or with other settings")
    g.add_argument("--strict", action="store_true", help="stop at the first bad clip instead of skipping it")
    g.add_argument("--batch-size", type=int, default=16, help="clips per batch (published Phi-4-multimodal runs: "
                                                              "32 classic, 160 current, on one GPU)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--prompt", help="override the prompt (default: the reference prompt of each set)")
    g.add_argument("--limit", type=int, help="evaluate only the first N clips of each set (smoke runs)")
    g.add_argument("--warmup-batches", type=int, default=1,
                   help="untimed batches before timing, per set (default 1). RTFx over under 60 s of audio is noisy: "
                        "the summary says how much audio it was measured over")


def main(args) -> int:
    from .generate import load_model_and_processor

    sel = resolve_sets(args.sets, protocol=args.protocol, data=args.data, manifests=args.manifest, split=args.split,
                       config=args.config, prompt=args.prompt)
    skips = SkipList(args.strict)
    prepared = prepare_sets(sel.sets, args.limit, protocol=sel.protocol, allow_outside_root=args.allow_outside_root,
                            skips=skips)
    model, processor, device, dtype = load_model_and_processor(args.model, args.dtype, args.device,
                                                               getattr(args, "quantization", None))
    summary = evaluate_asr(model, processor, sel.sets, args.output_dir, protocol=sel.label, complete=sel.complete,
                           batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, limit=args.limit,
                           warmup_batches=args.warmup_batches, model_name=args.model,
                           dtype=str(dtype).replace("torch.", ""), device=device, prepared=prepared,
                           scoring=sel.protocol, overwrite=args.overwrite, skips=skips)
    for name, v in summary["sets"].items():
        print(f"{name}: WER {v.get('wer')}  RTFx {v.get('rtfx')}  ({v.get('items', 0)} clips)")
    print(f"average WER {summary['average_wer']} ({summary['protocol']}; scoring reproduces "
          f"{summary['scoring']['reproduces']}); composite RTFx {summary['composite_rtfx']}")
    print(summary["rtfx_note"])
    print(f"results: {Path(args.output_dir) / 'summary.md'}")
    return 0
