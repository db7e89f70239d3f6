"""torch DDP for replicated training (stages/grad_sync.py) against the hand-written average it
replaced, which stays as the oracle: two gloo processes on CPU, launched with torchrun."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from datafactory import corpus
from launchers import finish, free_port, torchrun

WORKER = str(Path(__file__).with_name("grad_sync_worker.py"))
EXACT_ENV = {"OMP_NUM_THREADS": "1", "MKL_CBWR": "AUTO,STRICT"}  # as in test_training.py


@pytest.mark.slow  # ~30 s on two shared cores (two processes, imports included)
def test_ddp_gradients_equal_the_hand_written_average(tmp_path):
    """Through DDP (bucketed all-reduce during backward, no_sync while micro-batches accumulate,
    unused tensors found per step), every process ends a step with the gradients the hand-written
    average gives, bit for bit (two processes: both are (g0 + g1) / 2, see stages/grad_sync.py), and
    the same clipping norm: with the frozen-row split, a process that never reaches the audio
    projector, a last micro-batch whose loss reaches no trainable tensor or holds no row, DPO, and
    activation checkpointing; and after a sub-step boundary, where a new wrapper takes over another
    set of trainable tensors."""
    mixed, preference = corpus(tmp_path / "data", "mixed"), corpus(tmp_path / "data", "preference")
    finish(torchrun([WORKER, str(mixed), str(preference), str(tmp_path)], nproc=2, port=free_port(), env=EXACT_ENV))
    reports = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert set(reports[0]) == {f"{c}{s}" for c in ("audio_on_one_process", "empty_last_micro_batch", "dpo")
                               for s in ("", "+checkpointing")} | {"audio_on_one_process+second_plan"}
    for rank, report in enumerate(reports):
        for case, r in report.items():
            where = f"rank {rank}, {case}"
            assert r["ddp"]["wrapped"] == "DistributedDataParallel" and not r["ddp"]["hand_average_called"], where
            assert r["manual"]["wrapped"] is None and r["manual"]["hand_average_called"], where
            assert r["different"] == [] and r["different_clipped"] == [], (where, r["max_abs_difference"])
            assert r["ddp"]["norm"] == r["manual"]["norm"] > 1e-3, where  # clipped: the scale applies
            assert r["ddp"]["loss_sum"] == r["manual"]["loss_sum"], where
            if case.startswith("audio_on_one_process"):
                assert r["audio_projector_grad"] > 0, where  # rank 1 got rank 0's audio gradient
    # the cases hold what their names say (rank 1's last micro-batch)
    assert reports[1]["audio_on_one_process"]["no_grad_last"]
    assert reports[1]["empty_last_micro_batch"]["last_empty"]
