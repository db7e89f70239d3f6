"""``molora quickstart`` (what ``make demo`` runs): the embedded default, end to end, offline.

Generates (or reuses) the synthetic corpora, loads the tiny preset's shipped pretrained parts
(``MoLoRAModel.from_pretrained("tiny")``), evaluates the untrained model, runs the stages in order
(vision, speech, joint, SFT, DPO) with the trainer, evaluates after each stage with the real
evaluators (WER with the leaderboard normaliser on held-out speech, ANLS on held-out documents,
relaxed accuracy on held-out charts), shows two chat turns and writes ``report.md`` (results table,
PNG plots) and ``results.json``::

    {"before": {...}, "final": {"wer": percent, "anls": 0..1, "relaxed_accuracy": 0..1},
     "stages": {stage: {"steps", "loss_first", "loss_last", "losses", "metrics"}}, "wall_seconds": s}

Everything but ``wall_seconds`` is a function of the seed (the same seed twice gives the same
``results.json`` apart from that key; per-stage timings are only in ``report.md``).
``--fast`` runs the same pipeline on the tiny corpora with a few steps per stage (tests).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

METRICS = ("wer", "anls", "relaxed_accuracy")
STAGE_ORDER = ("vision", "speech", "joint", "sft", "dpo")

# steps, micro batch, learning rates and freeze plans per stage (full run; --fast scales the steps)
# Each stage's schedule at the tiny scale; what it trains (its sub-steps and their freeze plans) is
# the stage table's (molora/stages/table.py), with ``fractions`` giving each sub-step's share of the steps.
PLAN = {
    "vision": {"steps": 500, "batch": 16, "lr": 3e-3, "lr_groups": {"encoder": 5e-4, "projector": 3e-3, "lora": 3e-3},
               "fractions": {"projector_alignment": 0.25, "encoder_projector": 0.15, "vision_lora": 0.6}},
    "speech": {"steps": 1000, "batch": 16, "lr": 3e-3, "lr_groups": {"encoder": 5e-4, "projector": 3e-3, "lora": 3e-3},
               "fractions": {"pretraining": 0.3, "post_training": 0.7}},
    "joint": {"steps": 80, "batch": 16, "lr": 5e-4, "lr_groups": {"encoder": 1e-4}},
    # mixed batches (no length grouping): the four kinds' losses differ by 100x, so a length-grouped
    # stage's loss curve shows which kind each batch held, not whether the stage learns
    "sft": {"steps": 120, "batch": 16, "lr": 2e-4, "lr_groups": {}, "group_by_length": False},
    # DPO on the SFT model's own wrong answers (molora/synthetic/mistake_pairs.py)
    "dpo": {"steps": 40, "batch": 8, "lr": 5e-4, "lr_groups": {}, "beta": 0.1},
}
EVAL_ROWS = {"full": 100, "fast": 6}  # held-out rows per metric
MISTAKE_ROWS = {"full": 200, "fast": 6}  # training questions per corpus (documents, charts) the SFT model answers
CORPORA = ("speech", "documents", "charts", "joint")
FAST_STEPS = {"vision": 4, "speech": 4, "joint": 2, "sft": 2, "dpo": 2}
# held-out answer loss (teacher forced, nats per answer token) per kind of row, after every stage; each
# stage should lower it on the kinds it trains on (DPO is judged on held-out preference pairs instead)
ANSWER_KINDS = ("speech", "documents", "charts", "joint")
TRAINS_ON = {"vision": ("documents", "charts"), "speech": ("speech",), "joint": ("joint",),
             "sft": ANSWER_KINDS, "dpo": ()}


def _log(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


def _rows_under(manifest: Path, root: Path) -> list[dict]:
    """Rows of a corpus manifest with media paths relative to ``root`` (the corpora root, which holds
    every corpus folder), so that one manifest at the root can mix several corpora."""
    def rel(value: str) -> str:
        return (manifest.parent / value).resolve().relative_to(root).as_posix()

    rows = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        for k in ("image", "audio"):
            if isinstance(row.get(k), str):
                row[k] = rel(row[k])
        for m in row.get("messages", []):
            for part in m["content"] if isinstance(m.get("content"), list) else []:
                for k in ("image", "audio"):
                    if isinstance(part.get(k), str):
                        part[k] = rel(part[k])
        rows.append(row)
    return rows


def _mix(root: Path, name: str, manifests: list[Path], limit_each: int | None = None) -> str:
    """One training manifest from several corpora (interleaved, deterministic), written at the corpora
    root with relative media paths: inside its data root, so ``molora train`` takes it as it is."""
    root = root.resolve()
    parts = [_rows_under(Path(m), root)[:limit_each] if limit_each else _rows_under(Path(m), root) for m in manifests]
    rows = []
    for i in range(max(len(p) for p in parts)):
        rows += [p[i] for p in parts if i < len(p)]
    path = root / f"{name}.jsonl"
    tmp = root / f".{name}.jsonl.{os.getpid()}.tmp"  # another quickstart may write the same file: rename in
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return str(path)


def eval_samples(corpora: dict, n: int) -> list:
    from molora.data.manifest import read_manifest

    return (read_manifest(corpora["speech"]["test"])[:n] + read_manifest(corpora["documents"]["test"])[:n]
            + read_manifest(corpora["charts"]["test"])[:n])


def held_out_rows(corpora: dict, n: int) -> dict[str, list]:
    """The first ``n`` test rows of each corpus (``ANSWER_KINDS``), for the held-out answer loss."""
    from molora.data.manifest import read_manifest

    return {k: read_manifest(corpora[k]["test"])[:n] for k in ANSWER_KINDS}


def answer_losses(model, processor, rows: dict[str, list]) -> dict[str, float]:
    """Held-out answer loss (nats per answer token, teacher forced) of each kind of row."""
    from molora.stages.evaluation import answer_loss

    out = {}
    for kind, samples in rows.items():
        total, tokens = answer_loss(model, processor, [x.messages for x in samples])
        out[kind] = round(total / max(tokens, 1), 4)
    return out


def stage_directions(results: dict) -> dict[str, dict]:
    """Whether each stage moved what it trains the right way: its kinds' held-out answer loss against
    the point before it (``TRAINS_ON``); DPO: a positive reward margin on held-out pairs (the chosen reply
    gained log-probability against the rejected one, relative to the model DPO started from)."""
    out, prev = {}, results["answer_loss"]["before"]
    for name, st in results["stages"].items():
        now = results["answer_loss"][name]
        if name == "dpo":  # the reward margin is how much more likely the chosen reply became, against the rejected
            p = st["preference"]
            out[name] = {"measure": "held-out pairs: reward margin", "before": 0.0, "after": p["reward_margin"],
                         "ok": p["pairs"] > 0 and p["reward_margin"] > 0}
        else:
            kinds = TRAINS_ON[name]
            b = sum(prev[k] for k in kinds) / len(kinds)
            a = sum(now[k] for k in kinds) / len(kinds)
            out[name] = {"measure": "answer loss: " + ", ".join(kinds), "before": round(b, 4), "after": round(a, 4),
                         "ok": a < b}
        prev = now
    return out


def evaluate(model, processor, samples) -> tuple[dict, list[str]]:
    """(the three metrics, the greedy predictions) on ``samples``."""
    from molora.stages.evaluation import generation_metrics

    m = generation_metrics(model, processor, samples, batch_size=16, max_new_tokens=24)
    return {k: round(float(m[k]), 4) for k in METRICS if k in m}, m["predictions"]


def image_reliance(model, processor, samples) -> dict:
    """Answer loss on the held-out document / chart rows with their own image vs another row's
    (``stages.evaluation.media_reliance``): shows whether the model reads the image at all."""
    from molora.stages.evaluation import media_reliance

    vqa = [x for x in samples if x.kind == "vqa"]
    return {name: media_reliance(model, processor, [x for x in vqa if ("chart" in x.source) == (name == "charts")])
            for name in ("documents", "charts")}


def mistake_manifest(model, processor, corpora: dict, path: Path, n: int) -> tuple[str, int, int]:
    """The DPO stage's pairs: ``model`` answers the first ``n`` document and ``n`` chart training
    questions; each wrong answer becomes a pair (chosen = the reference). Returns (manifest, pairs, asked)."""
    from molora.data.manifest import read_manifest
    from molora.synthetic.mistake_pairs import mistake_pairs, write_pairs

    docs, charts = (read_manifest(corpora[k]["train"])[:n] for k in ("documents", "charts"))
    asked = [row for pair in zip(docs, charts) for row in pair]
    _, predictions = evaluate(model, processor, asked)
    pairs = mistake_pairs(asked, predictions)
    return str(write_pairs(path, pairs)), len(pairs), len(asked)


def held_out_preferences(policy, reference, processor, samples, reference_predictions, beta: float) -> dict:
    """DPO's reward on held-out pairs made the same way: the reference's (the SFT model's) wrong
    answers to the held-out questions, against the right ones."""
    from molora.stages.evaluation import preference_metrics
    from molora.synthetic.mistake_pairs import mistake_pairs

    pairs = mistake_pairs(samples, reference_predictions)
    m = preference_metrics(policy, reference, processor, pairs, beta=beta)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}


def stage_recipe(stage: str, model_path: str, train: str, seed: int, fast: bool, steps: int | None = None):
    from molora.stages.recipe import build_recipe

    from molora.stages.table import stage as stage_entry

    p = PLAN[stage]
    steps = steps or (FAST_STEPS[stage] if fast else p["steps"])
    substeps = [dict(s, fraction=p.get("fractions", {}).get(s["name"], s["fraction"]))
                for s in stage_entry(stage).default_substeps()]
    raw = {"name": f"quickstart-{stage}", "stage": stage, "model": {"path": model_path},
           "data": {"train": train}, "max_steps": steps, "seed": seed,
           "substeps": substeps,
           "training": {"micro_batch_size": 4 if fast else p["batch"], "lr": p["lr"], "lr_groups": p["lr_groups"],
                        "warmup_steps": 0 if fast else 5, "schedule": "cosine", "min_lr_ratio": 0.05,
                        "max_grad_norm": 1.0, "group_by_length": p.get("group_by_length", True)}}
    if "beta" in p:  # the dpo stage's own section (stages/table.py)
        raw[stage] = {"beta": p["beta"]}
    return build_recipe(raw, source=f"quickstart:{stage}")


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [round(float(r["loss"]), 5) for r in rows if "loss" in r]


def window_means(losses: list[float]) -> tuple[float, float]:
    """Mean training loss over the first and the last tenth of a stage's steps (one step's loss
    depends on what its batch held)."""
    from molora.stages.loss_curve import loss_windows

    first, last, _ = loss_windows(losses)
    return round(first, 5), round(last, 5)


def chat_turns(model, processor, samples, predictions) -> list[dict]:
    """Two turns with the final model: the first held-out chart question it answers right (the
    first chart question when it answers none; the report says which) and the first held-out clip."""
    from molora import Chat
    from molora.synthetic.mistake_pairs import is_right

    chat = Chat(model, processor)
    charts = [(s, p) for s, p in zip(samples, predictions) if s.kind == "vqa" and "chart" in s.source]
    right = [s for s, p in charts if is_right(s, p)]
    chart = right[0] if right else charts[0][0]
    clip = next(s for s in samples if s.kind == "asr")
    turns = []
    for s in (chart, clip):
        msgs = s.messages[:-1]
        reply = chat.generate(msgs, max_new_tokens=32)
        media = next(p.get("image") or p.get("audio") for p in msgs[-1]["content"] if p.get("type") in ("image", "audio"))
        text = " ".join(p["text"] for p in msgs[-1]["content"] if p.get("type") == "text")
        turns.append({"media": str(media), "user": text, "assistant": reply.strip(),
                      "reference": s.messages[-1]["content"], "correct": is_right(s, reply)})
    turns[0]["note"] = (f"the first held-out chart question the final model answers right; {len(right)} of "
                        f"{len(charts)} are" if right else "the first held-out chart question; the final model "
                                                           "answers none of them right")
    return turns


# -- report ---------------------------------------------------------------------------------------------

def _fmt(metric: str, v) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}%" if metric == "wer" else f"{v:.3f}"


LOWER_IS_BETTER = {"wer"}
COLOURS = {"start": "grey", "improved": "tab:green", "worse": "tab:red", "unchanged": "tab:olive"}


def bar_changes(metric: str, values: list[float]) -> list[str]:
    """For each evaluation point after the first: "improved", "worse" or "unchanged" against the point
    before it (lower WER is better; higher ANLS / accuracy); the first is "start"."""
    out = ["start"]
    for prev, cur in zip(values, values[1:]):
        if cur == prev or cur != cur or prev != prev:
            out.append("unchanged")
        else:
            better = cur < prev if metric in LOWER_IS_BETTER else cur > prev
            out.append("improved" if better else "worse")
    return out


def write_plots(out: Path, results: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, len(results["stages"]), figsize=(3.2 * len(results["stages"]), 2.8), squeeze=False)
    from molora.stages.loss_curve import draw_loss

    for ax, (name, st) in zip(axes[0], results["stages"].items()):
        draw_loss(ax, list(range(1, len(st["losses"]) + 1)), st["losses"])
        ax.set_title(name)
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=90)
    plt.close(fig)
    files.append("loss.png")

    labels = ["before"] + list(results["stages"])
    rows = [results["before"]] + [st["metrics"] for st in results["stages"].values()]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    targets = {"wer": 15.0, "anls": 0.7, "relaxed_accuracy": 0.6}
    for ax, metric in zip(axes, METRICS):
        vals = [r.get(metric, float("nan")) for r in rows]
        ax.bar(range(len(vals)), vals, color=[COLOURS[c] for c in bar_changes(metric, vals)])
        ax.axhline(targets[metric], color="black", ls="--", lw=1)
        ax.set_xticks(range(len(vals)), labels, rotation=30, fontsize=8)
        ax.set_title(metric + (" (%, lower is better)" if metric == "wer" else " (higher is better)"), fontsize=9)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    labels = {"improved": "better than the bar before", "worse": "worse than the bar before", "unchanged": "unchanged"}
    handles = [Patch(color=COLOURS[c], label=text) for c, text in labels.items()]
    axes[-1].legend(handles=handles + [Line2D([], [], color="black", ls="--", lw=1, label="target")], fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=90)
    plt.close(fig)
    files.append("metrics.png")
    return files


def report_table(results: dict) -> list[str]:
    """The markdown results table: one row per evaluation point, one column per metric."""
    lines = ["| after | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    rows = [("before (pretrained parts, untrained projectors/LoRAs)", results["before"])]
    rows += [(name, st["metrics"]) for name, st in results["stages"].items()]
    for label, m in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(k, m.get(k)) for k in METRICS) + " |")
    lines.append("| **final** | " + " | ".join(f"**{_fmt(k, results['final'].get(k))}**" for k in METRICS) + " |")
    return lines


def reliance_lines(results: dict) -> list[str]:
    r = results.get("image_reliance")
    if not r:
        return []
    return ["Does the final model read the image? Answer loss (nats per answer token) on the same held-out rows "
            "with each row's own image and with another row's image (equal figures: the answers come from the "
            "question alone):", "",
            "| rows | own image | another row's image |", "|---|---|---|",
            *[f"| {name} | {v['own']:.3f} | {v['swapped']:.3f} |" for name, v in r.items()]]


def answer_loss_lines(results: dict) -> list[str]:
    """The held-out answer loss after each point, and whether each stage moved its own kinds the right way."""
    table = results.get("answer_loss")
    if not table:
        return []
    lines = ["Held-out answer loss (nats per answer token, teacher forced; lower is better) after each stage:", "",
             "| after | " + " | ".join(ANSWER_KINDS) + " | this stage trains | moved the right way |",
             "|---|" + "---|" * (len(ANSWER_KINDS) + 2)]
    for point, losses in table.items():
        d = results.get("directions", {}).get(point)
        right = "-" if d is None else f"{'yes' if d['ok'] else 'no'} ({d['before']:.3f} -> {d['after']:.3f})"
        trains = ", ".join(TRAINS_ON.get(point, ())) or ("held-out pairs" if point == "dpo" else "-")
        lines.append(f"| {point} | " + " | ".join(f"{losses[k]:.3f}" for k in ANSWER_KINDS) + f" | {trains} | {right} |")
    return lines


def preference_lines(results: dict) -> list[str]:
    p = results["stages"].get("dpo", {}).get("preference")
    if not p:
        return []
    return [f"DPO on {p['pairs']} held-out preference pairs (the model after DPO against the model it started "
            "from, the DPO reference):", "",
            "| reward margin | reward accuracy | chosen more likely than rejected: before | after |",
            "|---|---|---|---|",
            f"| {p['reward_margin']:+.3f} | {p['reward_accuracy']:.3f} | {p['chosen_preferred_before']:.3f} | "
            f"{p['chosen_preferred_after']:.3f} |"]


def own_run_lines(data: dict[str, str] | None) -> list[str]:
    if not data:
        return []
    recipes = {"vision": "tiny-vision", "speech": "tiny-speech", "joint": "tiny-joint", "sft": "tiny-sft",
               "dpo": "tiny-dpo"}
    return ["## Train a stage yourself", "",
            "The stage manifests sit beside the corpora, with media paths relative to them, so `molora train` "
            "takes them as they are:", "", "```bash",
            *[f"molora train --recipe {recipes[k]} data.train={v} --output-dir runs/my-{k}" for k, v in data.items()],
            "```"]


def write_report(out: Path, results: dict, timings: dict, turns: list[dict], fast: bool, seed: int = 0,
                 data: dict[str, str] | None = None) -> None:
    plots = write_plots(out, results)
    lines = ["# molora quickstart", "",
             f"Tiny preset, synthetic corpora, seed {seed}"
             f"{' (--fast: a few steps per stage, not a quality run)' if fast else ''}. "
             f"Wall time {results['wall_seconds']:.0f} s.", "",
             "Held-out test rows: WER (%, leaderboard normaliser) on synthetic speech, ANLS on synthetic documents, "
             "relaxed accuracy on synthetic charts. Targets: WER <= 15%, ANLS >= 0.7, relaxed accuracy >= 0.6.", "",
             *report_table(results), "",
             *answer_loss_lines(results), "",
             *reliance_lines(results), "",
             "Training loss: mean over the first and the last tenth of each stage's steps (DPO: its preference loss).",
             "", "| stage | steps | loss, first tenth | loss, last tenth | seconds |", "|---|---|---|---|---|"]
    for name, st in results["stages"].items():
        lines.append(f"| {name} | {st['steps']} | {st['loss_first']:.4f} | {st['loss_last']:.4f} | "
                     f"{timings.get(name, 0):.0f} |")
    lines += ["", *preference_lines(results), "", "## Chat", ""]
    for t in turns:
        one = {k: " ".join(str(v).split()) for k, v in t.items()}
        note = f"; {one['note']}" if "note" in one else ""
        lines += [f"- **user** ({Path(one['media']).name}{note}): {one['user']}",
                  f"  - **assistant**: `{one['assistant']}` ({'right' if t['correct'] else 'wrong'})",
                  f"  - reference: {one['reference']}"]
    lines += ["", *own_run_lines(data), "", "## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots] + [""]
    (out / "report.md").write_text("\n".join(lines))


# -- pipeline -------------------------------------------------------------------------------------------

def run(output_dir: str | os.PathLike = "runs/quickstart", *, fast: bool = False, seed: int = 0,
        corpora_root=None, progress: bool = True, steps: dict[str, int] | None = None) -> dict:
    """The quickstart pipeline into ``output_dir``; ``steps`` overrides stages' step counts
    (``{"vision": 40}``)."""
    from molora.folder_lock import hold_folder
    from molora.stages.run_state import check_output_dir

    out = Path(output_dir)
    check_output_dir(out)
    with hold_folder(out, what="molora quickstart"):  # another quickstart into this folder is refused
        return _run(out, fast=fast, seed=seed, corpora_root=corpora_root, progress=progress, steps=steps or {})


def _run(out: Path, *, fast: bool, seed: int, corpora_root, progress: bool, steps: dict[str, int]) -> dict:
    from molora import MoLoRAModel, MoLoRAProcessor
    from molora.checkpoint import preset_weights
    from molora.stages.trainer import seed_everything, train
    from molora.synthetic.build import build_corpora

    t0 = time.perf_counter()
    size = "tiny" if fast else "default"
    _log(f"corpora ({size} sizes; cached after the first run)")
    corpora = build_corpora(corpora_root, seed=seed, sizes=size, names=CORPORA, log=_log)
    if preset_weights("tiny") is None:
        _log("warning: no shipped pretrained tiny weights (molora/weights/tiny); starting from random parts")
    unknown = sorted(set(steps) - set(STAGE_ORDER))
    if unknown:
        raise ValueError(f"steps for unknown stage(s) {unknown}: the stages are {list(STAGE_ORDER)}")
    samples = eval_samples(corpora, EVAL_ROWS["fast" if fast else "full"])
    held_out = held_out_rows(corpora, EVAL_ROWS["fast" if fast else "full"])
    c = corpora
    root = Path(c["speech"]["train"]).parent.parent.resolve()  # every corpus folder is under it
    tag = f"quickstart-{seed}-{size}"
    data = {
        "vision": _mix(root, f"{tag}-vision", [c["documents"]["train"], c["charts"]["train"]]),
        "speech": _mix(root, f"{tag}-speech", [c["speech"]["train"]]),
        # joint trains vision-side parts only: no speech-only rows (nothing to train in such a batch)
        "joint": _mix(root, f"{tag}-joint", [c["joint"]["train"], c["documents"]["train"], c["charts"]["train"]],
                      limit_each=None if fast else 400),
        "sft": _mix(root, f"{tag}-sft", [c["speech"]["train"], c["documents"]["train"], c["charts"]["train"],
                                         c["joint"]["train"]], limit_each=None if fast else 600),
    }

    seed_everything(seed)
    model, processor = MoLoRAModel.from_pretrained("tiny"), MoLoRAProcessor.from_pretrained("tiny")
    _log(f"evaluating the untrained model on {len(samples)} held-out rows")
    before, predictions = evaluate(model, processor, samples)
    losses_at = {"before": answer_losses(model, processor, held_out)}
    _log(f"before: {before}; held-out answer loss {losses_at['before']}")

    stages, timings, current = {}, {}, "tiny"
    for stage in STAGE_ORDER:
        ts = time.perf_counter()
        if stage == "dpo":  # pairs from the SFT model's own wrong answers to training questions
            data["dpo"], n_pairs, n_asked = mistake_manifest(model, processor, corpora, root / f"{tag}-dpo.jsonl",
                                                             MISTAKE_ROWS["fast" if fast else "full"])
            _log(f"dpo pairs: {n_pairs} wrong answers of the SFT model to {n_asked} training questions")
            if not n_pairs:
                _log("no wrong answer to learn from: DPO skipped")
                continue
        run_dir = out / stage
        recipe = stage_recipe(stage, current, data[stage], seed, fast, steps.get(stage))
        _log(f"stage {stage}: {recipe.max_steps} steps")
        # an earlier quickstart's stage run is replaced; what else the folder holds is left alone
        summary = train(recipe, run_dir, progress=progress, overwrite=True)
        current, previous, previous_predictions = str(run_dir / "final"), model, predictions
        seed_everything(seed)
        model, processor = MoLoRAModel.from_pretrained(current), MoLoRAProcessor.from_pretrained(current)
        metrics, predictions = evaluate(model, processor, samples)
        losses_at[stage] = answer_losses(model, processor, held_out)
        losses = _losses(run_dir)
        first, last = window_means(losses)
        stages[stage] = {"steps": int(summary["steps"]), "loss_first": first, "loss_last": last,
                         "losses": losses, "metrics": metrics}
        if stage == "dpo":
            stages[stage]["pairs"] = n_pairs
            stages[stage]["preference"] = held_out_preferences(model, previous, processor, samples,
                                                               previous_predictions, recipe.settings.beta)
            _log(f"dpo on held-out pairs: {stages[stage]['preference']}")
        del previous
        timings[stage] = time.perf_counter() - ts
        _log(f"after {stage}: {metrics}; held-out answer loss {losses_at[stage]}  ({timings[stage]:.0f} s)")

    turns = chat_turns(model, processor, samples, predictions)
    for t in turns:
        _log(f"chat  user: [{Path(t['media']).name}] {t['user']}")
        _log(f"chat  assistant: {t['assistant']}   (reference: {t['reference']}; "
             f"{'right' if t['correct'] else 'wrong'})")
    reliance = image_reliance(model, processor, samples)
    _log(f"image reliance (answer loss, own image vs another row's): {reliance}")
    results = {"before": before, "final": metrics, "stages": stages, "answer_loss": losses_at,
               "image_reliance": reliance}
    results["directions"] = stage_directions(results)
    for name, d in results["directions"].items():
        _log(f"{name}: {d['measure']} {d['before']} -> {d['after']} ({'the right way' if d['ok'] else 'THE WRONG WAY'})")
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(out, results, timings, turns, fast, seed, data)
    _log(f"final: {results['final']}  wall {results['wall_seconds']:.0f} s")
    _log(f"wrote {out / 'report.md'} and {out / 'results.json'}")
    return results


def add_parser(sub) -> None:
    q = sub.add_parser("quickstart", help="train the tiny model through every stage on synthetic data, offline",
                       description=__doc__.splitlines()[0])
    q.add_argument("--output-dir", default="runs/quickstart")
    q.add_argument("--fast", action="store_true", help="tiny corpora and a few steps per stage (about a minute)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=2,
                   help="torch threads (default 2, the machine the demo is sized for; a fixed count rather than "
                        "the core count, so results.json does not depend on how many cores a machine has)")
    q.add_argument("--corpora-root", default=None, help="synthetic corpora cache (default: $MOLORA_SYNTHETIC_DIR "
                                                        "or ~/.cache/molora/synthetic)")
    q.add_argument("--steps", action="append", default=[], metavar="STAGE=N", type=_stage_steps,
                   help="a stage's step count instead of the plan's, e.g. --steps vision=40 (repeatable)")
    q.set_defaults(func=_cli)


def _stage_steps(text: str) -> tuple[str, int]:
    stage, _, n = text.partition("=")
    if stage not in STAGE_ORDER or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected STAGE=N with STAGE one of {', '.join(STAGE_ORDER)} "
                                         "and N >= 1")
    return stage, int(n)


def _cli(args) -> int:
    torch.set_num_threads(max(1, args.threads))
    run(args.output_dir, fast=args.fast, seed=args.seed, corpora_root=args.corpora_root, steps=dict(args.steps))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="molora quickstart")
    add_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["quickstart", *(argv or [])])
    return args.func(args)


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
