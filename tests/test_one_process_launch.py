"""A launched run of one process (torchrun --nproc-per-node=1) takes the distributed code paths it
asks for — FSDP2 (``training.parallel=fsdp2``) or torch DDP (``training.grad_sync=ddp``) over a
process group of one — and takes the steps a plain process takes. ``make gpu-check`` measures those
paths on one GPU this way (benchmarks/gpu_check.py)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from datafactory import corpus
from launchers import finish, free_port, torchrun

EXACT_ENV = {"OMP_NUM_THREADS": "1", "MKL_CBWR": "AUTO,STRICT"}  # as in test_training.py


def _args(data, out, *extra) -> list[str]:
    # no frozen-row split in any run: a sharded run never splits (FSDP needs every process to enter the
    # same units), so the runs compute the same tensors in the same order. Each step holds all 8 rows of
    # the mixed corpus (two micro-batches of 4), so every step reaches every trained tensor: a sharded run
    # gives a tensor no row reached a zero gradient (``touch_all``: every process enters every unit), which
    # AdamW moves by its momentum, where a plain run leaves the gradient out and the tensor unmoved
    return ["-m", "molora.cli", "train", "--recipe", "tiny-sft", f"data.train={data}", "max_steps=3", "seed=2",
            "--cpu", "training.micro_batch_size=4", "training.grad_accum=2", "training.split_frozen_rows=false",
            "save_every=2",
            "--output-dir", str(out), *extra]


def _losses(out) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.slow
def test_one_launched_process_runs_fsdp2_and_ddp_and_equals_a_plain_one(tmp_path):
    """Bit for bit: with one process FSDP2's shards are the whole tensors (its all-gather and
    reduce-scatter over one rank copy them), DDP's all-reduce over one rank leaves its buckets as they
    are (its 1/world scale is 1), and the gradient norm is summed the same way (float64, then rounded
    once): the same losses and final weights as the plain process."""
    import subprocess
    import sys

    from launchers import ROOT

    data = corpus(tmp_path / "data", "mixed")
    plain = subprocess.run([sys.executable, *_args(data, tmp_path / "plain")], cwd=ROOT, capture_output=True,
                           text=True, timeout=600, env={**__import__("os").environ, **EXACT_ENV})
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    finish(torchrun(_args(data, tmp_path / "fsdp2", "training.parallel=fsdp2"), port=free_port(), env=EXACT_ENV))
    finish(torchrun(_args(data, tmp_path / "ddp", "training.grad_sync=ddp"), port=free_port(), env=EXACT_ENV))
    summary = {k: json.loads((tmp_path / k / "summary.json").read_text())["parallel"] for k in ("plain", "fsdp2", "ddp")}
    assert summary == {"plain": {"processes": 1, "sharded": False, "grad_sync": "none"},
                       "fsdp2": {"processes": 1, "sharded": True, "grad_sync": "none"},
                       "ddp": {"processes": 1, "sharded": False, "grad_sync": "ddp"}}
    # FSDP2's checkpoint: its one shard of the trained tensors through torch.distributed.checkpoint
    ckpt = tmp_path / "fsdp2" / "checkpoints" / "step-2"
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == [".metadata", "__0_0.distcp"]
    assert not (ckpt / "trainable.safetensors").exists()
    final = {k: load_file(str(tmp_path / k / "final" / "model.safetensors")) for k in ("plain", "fsdp2", "ddp")}
    for k in ("fsdp2", "ddp"):
        assert _losses(tmp_path / k) == _losses(tmp_path / "plain"), k
        assert final[k].keys() == final["plain"].keys(), k
        assert all(torch.equal(final[k][n], final["plain"][n]) for n in final[k]), k
