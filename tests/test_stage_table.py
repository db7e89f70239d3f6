"""One table of stages (molora/stages/table.py) that the recipes, the CLI and the quickstart read,
and the trainer's collator packing rows like MoLoRAModel packs them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datafactory import corpus
from molora.stages.recipe import RECIPES_DIR, load_recipe, stage_recipe
from molora.stages.table import STAGES

ROOT = Path(__file__).resolve().parents[1]


def _plans(recipe):
    return [(s.name, sorted(s.train)) for s in recipe.substeps]


def _table_plans(name):
    return [(s["name"], sorted(s["train"])) for s in STAGES[name].substeps]


@pytest.mark.parametrize("name", list(STAGES))
def test_recipes_and_quickstart_take_their_plans_from_the_table(name):
    assert _plans(stage_recipe(name, {"data.train": "x.jsonl"})) == _table_plans(name)
    for path in sorted(RECIPES_DIR.glob("*.yaml")):  # packaged recipes without their own plan use the table's
        import yaml

        raw = yaml.safe_load(path.read_text())
        if raw.get("stage") == name and not raw.get("substeps"):
            assert _plans(load_recipe(str(path), {"data.train": "x.jsonl"})) == _table_plans(name), path.name
    from molora.quickstart import stage_recipe as quickstart_recipe

    assert _plans(quickstart_recipe(name, "tiny", "x.jsonl", 0, fast=False)) == _table_plans(name)


def test_cli_lists_the_table_and_runs_a_stage_from_it(tmp_path):
    listing = subprocess.run([sys.executable, "-m", "molora.cli", "train", "--list-stages"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0
    for name, st in STAGES.items():
        line = next(l for l in listing.stdout.splitlines() if l.startswith(name + " "))
        assert all(s["name"] in line for s in st.substeps)
        below = listing.stdout.splitlines()[listing.stdout.splitlines().index(line) + 1]
        assert below.strip().startswith(st.description)
    assert "(settings: dpo.beta=0.1)" in listing.stdout
    data = corpus(tmp_path / "data", "asr")
    r = subprocess.run([sys.executable, "-m", "molora.cli", "train", "--stage", "speech", f"data.train={data}",
                        "max_steps=2", "--output-dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()
    both = subprocess.run([sys.executable, "-m", "molora.cli", "train", "--stage", "speech", "--recipe", "tiny-sft",
                           "--output-dir", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "--recipe NAME_OR_PATH or --stage NAME" in both.stderr + both.stdout


def test_collator_packs_rows_in_adapter_order_with_the_padded_loss(tmp_path):
    from molora import MoLoRAConfig, MoLoRAModel, MoLoRAProcessor
    from molora.data.manifest import read_manifest
    from molora.stages.collate import Collator
    from molora.stages.losses import label_count, lm_loss_sum

    cfg = MoLoRAConfig.preset("tiny")
    torch.manual_seed(0)
    model = MoLoRAModel(cfg).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    proc = MoLoRAProcessor.from_config(cfg)
    samples = read_manifest(corpus(tmp_path / "data", "mixed"))[:8]
    padded = Collator(proc)(samples)
    packed = Collator(proc, pack=True)(samples)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    assert packed["input_ids"].shape[1] == int(padded["attention_mask"].sum())
    types = model.row_types(packed["input_ids"], packed["cu_seqlens"])
    ranks = model.router.adapter_index(types).tolist()
    assert ranks == sorted(ranks) and len(set(ranks)) > 1  # each adapter's rows together
    assert label_count(packed) == label_count(padded) == int(packed["num_label_tokens"])
    as64 = lambda b: {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in b.items()}  # noqa: E731
    losses = []
    for batch in (padded, packed):
        model.zero_grad(set_to_none=True)
        loss = lm_loss_sum(model, as64(batch))
        loss.backward()
        losses.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(losses[0][0], losses[1][0], rtol=1e-10, atol=0)
    for n, g in losses[0][1].items():
        torch.testing.assert_close(losses[1][1][n], g, rtol=1e-9, atol=1e-12, msg=n)
