"""Launching over several machines, simulated on this one: two torchrun "nodes" of one process each
(``--nnodes=2 --node-rank=0/1``, static rendezvous on 127.0.0.1, a free port picked at random)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from datafactory import corpus
from launchers import finish, free_port, torchrun

EXACT_ENV = {"OMP_NUM_THREADS": "1", "MKL_CBWR": "AUTO,STRICT"}  # as in test_training.py


def _train(data, out, *extra) -> list[str]:
    return ["-m", "molora.cli", "train", "--recipe", "tiny-sft", f"data.train={data}", "max_steps=4", "seed=2",
            "--cpu", "training.micro_batch_size=2", "training.grad_accum=2", "--output-dir", str(out), *extra]


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _two_nodes(args_of_node) -> list:
    port = free_port()
    return [torchrun(args_of_node(rank), nnodes=2, node_rank=rank, port=port, env=EXACT_ENV) for rank in (0, 1)]


@pytest.mark.slow
def test_two_nodes_equal_two_processes_on_one(tmp_path):
    """Two nodes of one process each take the steps two processes of one node take (the same ranks,
    the same shares of each global batch, DDP's reduction over gloo): the same losses and final
    weights bit for bit; its checkpoints hold both ranks' RNG states and resume on two nodes to the
    same end. (Today's launch path needed nothing new for this: the test guards it.)"""
    data = corpus(tmp_path / "data", "mixed")
    finish(torchrun(_train(data, tmp_path / "one-node"), nproc=2, port=free_port(), env=EXACT_ENV))
    nodes = _two_nodes(lambda rank: _train(data, tmp_path / "two-nodes", "save_every=2"))
    for node in nodes:
        finish(node)
    a = load_file(str(tmp_path / "one-node" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two-nodes" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _metrics(tmp_path / "one-node")] == [r["loss"] for r in _metrics(tmp_path / "two-nodes")]
    step = tmp_path / "two-nodes" / "checkpoints" / "step-2"
    assert (step / "rng-0.pt").is_file() and (step / "rng-1.pt").is_file()
    # resumed on two nodes from the step-2 checkpoint (each rank reads its own RNG state): the same end
    import shutil

    shutil.copytree(tmp_path / "two-nodes", tmp_path / "again")
    shutil.rmtree(tmp_path / "again" / "final")
    for node in _two_nodes(lambda rank: _train(data, tmp_path / "again", "save_every=2", "--resume")):
        finish(node)
    c = load_file(str(tmp_path / "again" / "final" / "model.safetensors"))
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_an_output_folder_each_node_does_not_see_is_refused(tmp_path):
    """Node-local output folders (here: another path per node) would leave checkpoints no resume can
    read: every process stops before the model loads, naming the folder and the cause."""
    data = corpus(tmp_path / "data", "mixed")
    nodes = _two_nodes(lambda rank: _train(data, tmp_path / f"node-{rank}"))
    outs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, out in zip(nodes, outs):
        assert node.returncode != 0, out[-3000:]
        assert "not one folder for the whole launch" in out and "every node mounts" in out, out[-3000:]
    assert not (tmp_path / "node-0" / "metrics.jsonl").exists() and not (tmp_path / "node-1").exists()
