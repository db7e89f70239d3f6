"""The embedded default: `molora quickstart --fast` runs every stage and writes a consistent report;
the tiny pretraining script runs a few steps; the shipped tiny parts load."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _table(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] and not set(cells[1]) <= set("-"):
            rows[cells[0]] = cells[1:]
    return rows


def _cell(metric: str, v) -> str:
    return f"{v:.2f}%" if metric == "wer" else f"{v:.3f}"


def _check_image_reliance(reported: dict, model_dir: Path, corpora_root: Path) -> None:
    """Recompute the report's image reliance from the saved final model, one row at a time with full
    logits: mean answer loss (nats per labelled token) with each row's own image, and with the next
    row's image instead."""
    from molora import MoLoRAModel, MoLoRAProcessor
    from molora.quickstart import EVAL_ROWS, eval_samples
    from molora.synthetic.build import build_corpora

    model, proc = MoLoRAModel.from_pretrained(str(model_dir)).eval(), MoLoRAProcessor.from_pretrained(str(model_dir))
    samples = eval_samples(build_corpora(corpora_root, seed=0, sizes="tiny", log=lambda _: None), EVAL_ROWS["fast"])
    for name in ("documents", "charts"):
        rows = [x.messages for x in samples if x.kind == "vqa" and ("chart" in x.source) == (name == "charts")]
        image = [next(c["image"] for c in m[0]["content"] if c["type"] == "image") for m in rows]
        totals, tokens = {"own": 0.0, "swapped": 0.0}, 0
        for i, msgs in enumerate(rows):
            swapped = json.loads(json.dumps(msgs))
            for c in swapped[0]["content"]:
                if c["type"] == "image":
                    c["image"] = image[(i + 1) % len(rows)]
            for key, conv in (("own", msgs), ("swapped", swapped)):
                batch = proc([conv], return_labels=True)
                with torch.no_grad():
                    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                # next-token cross-entropy written out here (position t scored on label t + 1; -100 skipped)
                totals[key] += float(F.cross_entropy(logits[0, :-1].double(), batch["labels"][0, 1:], reduction="sum"))
            tokens += int((batch["labels"][:, 1:] != -100).sum())
        rel = reported[name]
        assert rel["tokens"] == tokens > 0
        for key in totals:  # reported to 4 decimals from float32 batched sums
            want = totals[key] / tokens
            assert abs(rel[key] - want) <= 5e-5 + 1e-5 * want, (name, key, rel[key], want)


def _check_answer_loss(reported: dict, model_dir: Path, corpora_root: Path) -> None:
    """Recompute the held-out answer loss of each kind from the saved model, a row at a time (nats per
    answer token, float64 sums)."""
    from molora import MoLoRAModel, MoLoRAProcessor
    from molora.quickstart import ANSWER_KINDS, EVAL_ROWS, held_out_rows
    from molora.synthetic.build import build_corpora

    model, proc = MoLoRAModel.from_pretrained(str(model_dir)).eval(), MoLoRAProcessor.from_pretrained(str(model_dir))
    rows = held_out_rows(build_corpora(corpora_root, seed=0, sizes="tiny", log=lambda _: None), EVAL_ROWS["fast"])
    assert set(reported) == set(ANSWER_KINDS)
    for kind, samples in rows.items():
        total, tokens = 0.0, 0
        for x in samples:
            batch = proc([x.messages], return_labels=True)
            with torch.no_grad():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            total += float(F.cross_entropy(logits[0, :-1].double(), batch["labels"][0, 1:], reduction="sum"))
            tokens += int((batch["labels"][:, 1:] != -100).sum())
        want = total / tokens
        assert abs(reported[kind] - want) <= 5e-5 + 1e-5 * want, (kind, reported[kind], want)


@pytest.mark.slow
def test_quickstart_fast_runs_every_stage(tmp_path):
    out = tmp_path / "qs"
    r = subprocess.run([sys.executable, "-m", "molora.cli", "quickstart", "--fast", "--output-dir", str(out),
                        "--corpora-root", str(tmp_path / "syn")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"before", "final", "stages", "answer_loss", "directions", "image_reliance", "wall_seconds"}
    assert list(res["answer_loss"]) == ["before", *res["stages"]] and list(res["directions"]) == list(res["stages"])
    _check_answer_loss(res["answer_loss"]["dpo"], out / "dpo" / "final", tmp_path / "syn")
    _check_image_reliance(res["image_reliance"], out / "dpo" / "final", tmp_path / "syn")
    assert list(res["stages"]) == ["vision", "speech", "joint", "sft", "dpo"]
    for m in ("wer", "anls", "relaxed_accuracy"):
        assert m in res["before"] and m in res["final"]
    assert 0 <= res["final"]["anls"] <= 1 and 0 <= res["final"]["relaxed_accuracy"] <= 1
    assert res["final"] == res["stages"]["dpo"]["metrics"]
    for name, st in res["stages"].items():
        assert st["steps"] >= 1 and len(st["losses"]) == st["steps"]
        logged = [json.loads(l)["loss"] for l in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert st["losses"] == [round(x, 5) for x in logged] and all(math.isfinite(x) for x in logged)
        assert (out / name / "final").is_dir()
    report = (out / "report.md").read_text()
    table = _table(report)
    metrics = ("wer", "anls", "relaxed_accuracy")
    assert table["final"] == [_cell(m, res["final"][m]) for m in metrics]
    for name, st in res["stages"].items():
        assert table[name] == [_cell(m, st["metrics"][m]) for m in metrics]
    before = next(v for k, v in table.items() if k.startswith("before"))
    assert before == [_cell(m, res["before"][m]) for m in metrics]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) >= 2
    for img in images:
        with Image.open(out / img) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100
    assert "Transcribe" in report and "## Chat" in report
    for point, losses in res["answer_loss"].items():
        cells = " | ".join(f"{losses[k]:.3f}" for k in losses)
        assert f"\n| {point} | {cells} |" in report, (point, cells)
    for name, rel in res["image_reliance"].items():
        assert f"| {name} | {rel['own']:.3f} | {rel['swapped']:.3f} |" in report
    # DPO learns from the SFT model's own wrong answers and is measured on held-out ones
    dpo = res["stages"]["dpo"]
    assert dpo["pairs"] >= 1 and dpo["preference"]["pairs"] >= 1
    pref = dpo["preference"]
    for key in ("chosen_preferred_before", "chosen_preferred_after"):  # a share of the held-out pairs
        k = pref[key] * pref["pairs"]
        assert 0 <= pref[key] <= 1 and abs(k - round(k)) < 1e-6, (key, pref)
    assert f"| {pref['chosen_preferred_before']:.3f} | {pref['chosen_preferred_after']:.3f} |" in report
    assert f"| {dpo['preference']['reward_margin']:+.3f} | {dpo['preference']['reward_accuracy']:.3f} |" in report
    assert re.search(r"\*\*assistant\*\*: `[^`]*` \((right|wrong)\)", report)
    # the stage manifests sit in their data root: `molora train` reads them with the default checks
    from molora.data.manifest import read_manifest

    commands = re.findall(r"^molora train --recipe (tiny-\w+) data\.train=(\S+) ", report, flags=re.M)
    assert [c[0] for c in commands] == ["tiny-vision", "tiny-speech", "tiny-joint", "tiny-sft", "tiny-dpo"]
    for _, manifest in commands:
        assert Path(manifest).parent == (tmp_path / "syn").resolve() and read_manifest(manifest)

    again = tmp_path / "qs2"  # the same seed again: the same results.json but for wall_seconds
    r = subprocess.run([sys.executable, "-m", "molora.cli", "quickstart", "--fast", "--output-dir", str(again),
                        "--corpora-root", str(tmp_path / "syn")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res2 = json.loads((again / "results.json").read_text())
    res.pop("wall_seconds"), res2.pop("wall_seconds")
    assert res == res2


# long enough on the tiny corpora for every stage to move what it trains (--fast's 2-4 steps are not)
DIRECTION_STEPS = {"vision": 40, "speech": 40, "joint": 24, "sft": 24, "dpo": 8}


@pytest.mark.slow
def test_quickstart_each_stage_moves_what_it_trains(tmp_path):
    """Each stage lowers the held-out answer loss of the kinds of rows it trains on (vision: documents and
    charts, speech: speech, joint: spoken questions about images, SFT: all four), and DPO gains reward
    margin on held-out pairs of the SFT model's own mistakes. The recorded directions agree with the table."""
    out = tmp_path / "qs"
    steps = [f"--steps={k}={v}" for k, v in DIRECTION_STEPS.items()]
    r = subprocess.run([sys.executable, "-m", "molora.cli", "quickstart", "--fast", *steps, "--output-dir", str(out),
                        "--corpora-root", str(tmp_path / "syn")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert {k: v["steps"] for k, v in res["stages"].items()} == DIRECTION_STEPS
    from molora.quickstart import TRAINS_ON

    points = list(res["answer_loss"])
    for prev, name in zip(points, points[1:]):
        if name == "dpo":
            continue
        mean = lambda p: sum(res["answer_loss"][p][k] for k in TRAINS_ON[name]) / len(TRAINS_ON[name])  # noqa: E731
        assert mean(name) < mean(prev), (name, res["answer_loss"][prev], res["answer_loss"][name])
        assert res["directions"][name]["ok"] is True
    # the aligning stages move a lot: projectors start from random
    for name, kinds in (("vision", ("documents", "charts")), ("speech", ("speech",))):
        before = res["answer_loss"][points[points.index(name) - 1]]
        assert all(res["answer_loss"][name][k] < 0.9 * before[k] for k in kinds), (name, res["answer_loss"])
        assert res["stages"][name]["loss_last"] < res["stages"][name]["loss_first"]
    pref = res["stages"]["dpo"]["preference"]
    assert pref["pairs"] >= 3 and pref["reward_margin"] > 0 and pref["reward_accuracy"] > 0.5, pref
    assert res["directions"]["dpo"]["ok"] is True
    assert "THE WRONG WAY" not in r.stderr + r.stdout


def test_stage_directions_names_a_stage_that_moved_the_wrong_way():
    from molora.quickstart import stage_directions

    loss = lambda s, d, c, j: {"speech": s, "documents": d, "charts": c, "joint": j}  # noqa: E731
    results = {"answer_loss": {"before": loss(3.0, 2.0, 2.0, 4.0), "vision": loss(3.0, 1.0, 1.5, 3.0),
                               "speech": loss(3.1, 1.0, 1.5, 3.0), "dpo": loss(3.1, 1.0, 1.5, 3.0)},
               "stages": {"vision": {}, "speech": {}, "dpo": {"preference": {"pairs": 4, "reward_margin": -0.01}}}}
    d = stage_directions(results)
    assert d["vision"]["ok"] and (d["vision"]["before"], d["vision"]["after"]) == (2.0, 1.25)
    assert not d["speech"]["ok"] and (d["speech"]["before"], d["speech"]["after"]) == (3.0, 3.1)
    assert not d["dpo"]["ok"]


@pytest.mark.parametrize("bad", ["vision", "vison=4", "vision=0", "vision=x"])
def test_quickstart_steps_option_refuses_bad_values(bad, tmp_path):
    r = subprocess.run([sys.executable, "-m", "molora.cli", "quickstart", "--fast", "--steps", bad,
                        "--output-dir", str(tmp_path / "qs")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "expected STAGE=N" in r.stderr and bad in r.stderr, r.stderr[-500:]
    assert not (tmp_path / "qs").exists()


def test_pretrain_script_smoke(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "pretrain_tiny.py"), "--smoke", "--out",
                        str(tmp_path / "w"), "--corpora-root", str(tmp_path / "syn"),
                        "--phases", "lm,lookup,ctc,speech,ocr,crops,regions,vision,mixed", "--tower-feature-norm", "6",
                        "--set", "keep_drills=25", "--set", "keep_speech=15", "--save-full"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file

    from molora import MoLoRAConfig, MoLoRAModel

    sd = load_file(str(tmp_path / "w" / "model.safetensors"))
    own = MoLoRAModel(MoLoRAConfig.preset("tiny")).state_dict()
    assert sd and all(k in own and own[k].shape == v.shape for k, v in sd.items())
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in sd}
    assert {"audio_embed.encoder", "image_embed.img_processor"} <= prefixes
    assert any(k.startswith("language_model.") for k in sd) and not any("lora_" in k for k in sd)
    info = json.loads((tmp_path / "w" / "pretrain.json").read_text())
    assert info["smoke"] and info["phases"] == ["lm", "lookup", "ctc", "speech", "ocr", "crops", "regions", "vision",
                                             "mixed"]
    assert set(info["final_losses"]) == set(info["phases"]) and None not in info["final_losses"].values()
    full = load_file(str(tmp_path / "w" / "full" / "model.safetensors"))  # --save-full: the whole model
    assert all(torch.equal(full[k], v) for k, v in sd.items())
    trained = [k for k in full if k not in sd]  # the temporary projectors and LoRAs, trained (lora_B starts at 0)
    assert any(k.startswith("audio_embed.audio_projection.") for k in trained)
    assert any(".lora_B.vision." in k and full[k].abs().sum() > 0 for k in trained)
    MoLoRAModel.from_pretrained(str(tmp_path / "w" / "full"))


def test_pretrain_alongside_keeps_the_shares():
    """molora.pretraining.alongside: drill / speech rows make up the asked share of a phase's rows."""
    from molora.pretraining import alongside

    main, drills, speech = [("m", i) for i in range(600)], [("d", i) for i in range(7)], [("s", i) for i in range(500)]
    rows = alongside(main, [(drills, 25), (speech, 15)])
    share = {k: sum(r[0] == k for r in rows) / len(rows) for k in "mds"}
    assert rows[:600] == main and abs(share["d"] - 0.25) < 0.01 and abs(share["s"] - 0.15) < 0.01
    assert {r for r in rows if r[0] == "d"} == set(drills)  # a small pool is reused in turn
    assert alongside(main, [([], 30), (speech, 0)]) == main  # empty pool / zero share: nothing added
    with pytest.raises(ValueError, match="under 100"):
        alongside(main, [(drills, 60), (speech, 40)])


def test_pretrain_answer_band_holds_the_answer():
    """molora.pretraining.answer_band: the band around a question's answer contains the label drawn for
    that answer (and a table's header line), by construction, for every question of fresh pages."""
    import random

    from molora.pretraining import answer_band
    from molora.synthetic.documents import draw_document

    rng, checked = random.Random(5), 0
    for _ in range(30):
        page = draw_document(rng)
        for qa in page.qas:
            box = answer_band(page, qa, rng)
            assert box is not None, qa
            inside = [lab for lab in page.labels if box[1] <= lab.box[1] and lab.box[3] <= box[3]]
            assert any(lab.text in qa.answers for lab in inside), (qa, box)
            if page.kind == "table":
                assert any(lab.role == "header" for lab in inside)
            checked += 1
    assert checked > 60


def test_text_lookup_probe_smoke():
    """scripts/probe_text_lookup.py: its page-text questions carry their answer in the text, and
    a couple of training steps run."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import probe_text_lookup as probe
    finally:
        sys.path.pop(0)
    rows = probe.text_rows(3, 6)
    found = [any(a in t for a in answers) for t, _, answers in rows]
    assert len(rows) >= 6 and sum(found) >= len(rows) // 2, list(zip(found, rows))
    for extra in ([], ["--drills", "--batch", "4"]):  # the plain probe, and the look-up phase's recipe
        r = subprocess.run([sys.executable, str(REPO / "scripts" / "probe_text_lookup.py"), "--pages", "2",
                            "--train-steps", "2", "--train-pages", "2", "--eval-every", "1", *extra],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "before: exact" in r.stdout and "step 1: exact" in r.stdout and "after: exact" in r.stdout


def test_from_pretrained_tiny_loads_shipped_parts():
    from molora import MoLoRAConfig, MoLoRAModel
    from molora.checkpoint import preset_weights

    f = preset_weights("tiny")
    assert f is not None, "the tiny weights must ship with the package (scripts/pretrain_tiny.py makes them)"
    from safetensors.torch import load_file

    shipped = load_file(str(f))
    a, b = MoLoRAModel.from_pretrained("tiny").state_dict(), MoLoRAModel.from_pretrained("tiny").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # deterministic, projectors / LoRAs included
    assert all(torch.equal(a[k], v) for k, v in shipped.items())
    rnd = MoLoRAModel(MoLoRAConfig.preset("tiny")).state_dict()  # the bare preset stays a random model
    assert any(not torch.equal(rnd[k], v) for k, v in shipped.items())


def test_pretrain_recipe_chains_four_runs(tmp_path):
    """scripts/pretrain_tiny_recipe.sh (how the shipped weights were made): four runs, each
    starting from the previous one's weights, with the phases and step overrides the shipped
    pretrain.json lists."""
    env = dict(os.environ, PYTHON=sys.executable, SMOKE="1", EXTRA=f"--smoke --corpora-root {tmp_path / 'syn'}")
    r = subprocess.run(["bash", str(REPO / "scripts" / "pretrain_tiny_recipe.sh"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [json.loads((tmp_path / "out" / str(k) / "pretrain.json").read_text()) for k in (1, 2, 3, 4)]
    assert [r["start_from"] for r in runs] == [None] + ["model.safetensors"] * 3
    assert runs[1]["plan"]["ocr_steps"] == 2 and runs[3]["plan"]["lookup_steps"] == 2
    assert runs[3]["plan"]["keep_drills"] == 25 and runs[0]["plan"]["keep_drills"] == 0
    shipped = json.loads((REPO / "molora" / "weights" / "tiny" / "pretrain.json").read_text())
    assert [r["phases"] for r in runs] == [r["phases"] for r in shipped["runs"]]
    for k, (mine, theirs) in enumerate(zip(runs, shipped["runs"])):  # the same plan keys, same kept shares
        assert set(mine["plan"]) >= set(theirs["plan"]), k
        assert all(mine["plan"][key] == theirs["plan"].get(key, 0) for key in ("keep_drills", "keep_speech")), k


def test_shipped_pretrain_record_follows_the_recipe_script(tmp_path):
    """molora/weights/tiny/pretrain.json (written by the runs) lists, for each of its four runs, the phases and
    every count scripts/pretrain_tiny_recipe.sh sets (read from the commands the script issues, here recorded
    by a stand-in for python instead of run)."""
    log = tmp_path / "commands"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("SMOKE", "EXTRA")}
    r = subprocess.run(["bash", str(REPO / "scripts" / "pretrain_tiny_recipe.sh"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=60, env={**env, "PYTHON": str(fake)})
    assert r.returncode == 0, r.stderr[-3000:]
    commands = log.read_text().splitlines()
    shipped = json.loads((REPO / "molora" / "weights" / "tiny" / "pretrain.json").read_text())["runs"]
    assert len(commands) == len(shipped) == 4
    checked = 0
    for k, (command, run) in enumerate(zip(commands, shipped)):
        args = command.split()
        assert args[args.index("--phases") + 1].split(",") == run["phases"], k
        counts = dict(args[i + 1].split("=") for i, a in enumerate(args) if a == "--set")
        assert {key: run["plan"].get(key) for key in counts} == {key: int(v) for key, v in counts.items()}, k
        checked += len(counts)
    assert checked >= 8  # runs 2 and 4 set their own counts
