"""The sharded checkpoint layout (``sharded/``, written through torch.distributed.checkpoint by FSDP2
runs; stages/sharding.py) in one process: only the trained tensors and their optimiser state are
written, they read back exactly into a model and an optimiser that are not sharded, their shapes
come from the metadata alone, and a cut-short shard file is named as damage. The multi-process runs
(written by 2 processes, resumed by 1) are in test_training.py."""
from __future__ import annotations

import json

import torch

from molora import MoLoRAConfig, MoLoRAModel
from molora.stages.checkpointing import checkpoint_problem, is_sharded, load_checkpoint, save_checkpoint
from molora.stages.freeze import apply_plan
from molora.stages.recipe import load_recipe
from molora.stages.sharding import (SHARDED_DIR, load_sharded_optimizer, load_sharded_weights, save_sharded,
                                    sharded_shapes)


def trained_model(seed: int):
    torch.manual_seed(seed)
    model = MoLoRAModel(MoLoRAConfig.preset("tiny"))
    recipe = load_recipe("tiny-sft", {})
    apply_plan(model, sorted({c for s in recipe.substeps for c in s.train}))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for p in opt.param_groups[0]["params"]:  # one step, so the optimiser has state to save
        p.grad = torch.randn_like(p)
    opt.step()
    return model, opt, names


def test_sharded_layout_holds_only_the_trained_tensors_and_reads_back_exactly(tmp_path):
    model, opt, names = trained_model(0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    folder = save_checkpoint(tmp_path / "checkpoints", 4, weights=None, optimizer_state=None, scheduler=sched,
                             state={"step": 4}, rank=0, world=1, barrier=lambda: None, keep_last=2,
                             write_shards=lambda f: save_sharded(f, model, opt, names))
    assert is_sharded(folder) and checkpoint_problem(folder) is None
    assert sorted(p.name for p in folder.iterdir()) == ["rng-0.pt", "scheduler.pt", SHARDED_DIR, "trainer_state.json"]
    named = dict(model.named_parameters())
    assert sharded_shapes(folder / SHARDED_DIR) == {n: tuple(named[n].shape) for n in names}
    # on disk: the trained tensors and their two AdamW moments (float32), plus DCP's metadata and a
    # serialisation header per item (~2 KB each: weight, two moments, step), and nothing frozen
    trained = sum(named[n].numel() for n in names) * 4
    frozen = sum(p.numel() for n, p in named.items() if n not in names) * 4
    on_disk = sum(p.stat().st_size for p in (folder / SHARDED_DIR).iterdir())
    assert 3 * trained <= on_disk < 3 * trained + 4 * len(names) * 4096 < frozen

    other, other_opt, _ = trained_model(1)  # another model and optimiser state, overwritten by the load
    loaded = load_checkpoint(folder, rank=0)
    assert loaded["weights"] is None and loaded["sharded"] == folder / SHARDED_DIR
    load_sharded_weights(loaded["sharded"], other, names)
    load_sharded_optimizer(loaded["sharded"], other, other_opt)
    mine = dict(other.named_parameters())
    assert all(torch.equal(named[n], mine[n]) for n in names)
    assert not torch.equal(named["language_model.embed_tokens.weight"], mine["language_model.embed_tokens.weight"])
    a, b = opt.state_dict(), other_opt.state_dict()
    assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])

    shard = next((folder / SHARDED_DIR).glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-100])  # a write cut short
    name, reason = checkpoint_problem(folder)
    assert name == f"{SHARDED_DIR}/{shard.name}" and reason.startswith("cut short")
    (folder / SHARDED_DIR / ".metadata").unlink()
    assert checkpoint_problem(folder) == (f"{SHARDED_DIR}/.metadata", "missing")
    assert json.loads((folder / "trainer_state.json").read_text())["world_size"] == 1
