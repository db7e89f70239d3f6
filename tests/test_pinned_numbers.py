"""Pinned numbers (tests/data/pinned_*.json, written by tests/pinned_numbers.py): the shipped tiny
model's logits for a text, an image and an audio prompt, and the first 10 training losses of each
stage's tiny recipe. A change that moves them fails here with the command that writes them again."""
from __future__ import annotations

import json

import pytest
import torch

from molora.stages.table import STAGES
from pinned_numbers import (COMMAND, LOGITS_FILE, LOSSES_FILE, SLICE, STAGE_CORPUS, STEPS, logits_record,
                            stage_losses, tiny_logits, weights_digest)

# float32 throughout. Logits: a forward of the tiny model sums at most ~1024 products per output, through a
# few layers; another CPU, thread count or kernel reorders those sums and moves a logit by ~1e-6 of the
# logits' scale (a few float32 roundings, eps 1.2e-7, per layer). 1e-4 of the scale leaves two orders of
# room and still sees any real change (other weights, another op or order of ops move logits by >= 1e-2).
LOGIT_TOL = 1e-4
# Losses. The first is a float32 forward of the shipped weights (a mean over at most a few hundred tokens):
# reordered sums move it by ~1e-6 relative, so 1e-5. The later ones follow AdamW updates. Adam's first
# steps move every trained weight by about lr whatever its gradient's size (m / sqrt(v) is the gradient's
# sign), so weights whose gradient is at float32 rounding level take a direction the rounding picks; at the
# tiny recipes' lr (1e-2) that moved vision's step-8 loss by 1.4% between kernel sets (AVX-512 vs AVX2). The
# pinned runs therefore train at LR_SCALE (1/100) of the recipe's rate (tests/pinned_numbers.py): the
# sign-picked moves shrink with lr, and every stage then agrees to 1.6e-6 relative across threads and
# kernel sets (measured), while step 2's loss still moves by ~1e-2 with the update. 1e-4 relative leaves
# ~60x room and sees a changed gradient, optimizer, schedule, row order, freeze plan or loss.
FIRST_LOSS_RTOL = 1e-5
LOSS_RTOL = 1e-4


def _why(pinned: dict) -> str:
    now = weights_digest()
    weights = ("" if pinned.get("weights_sha256") == now else
               f" (the shipped tiny weights changed since the file was written: {pinned.get('weights_sha256')} "
               f"-> {now})")
    return (f"differs from the pinned numbers{weights}; if the change is deliberate, run `{COMMAND}` and commit "
            "tests/data/pinned_*.json with it")


def test_pinned_files_cover_every_stage():
    losses = json.loads(LOSSES_FILE.read_text())
    assert set(STAGE_CORPUS) == set(STAGES), f"give each stage a corpus kind in tests/pinned_numbers.py, then {COMMAND}"
    assert set(losses["losses"]) == set(STAGES), f"run `{COMMAND}`"
    assert all(len(v) == STEPS for v in losses["losses"].values())
    assert set(json.loads(LOGITS_FILE.read_text())["logits"]) == {"text", "image", "audio"}


def test_tiny_logits_match_the_pinned_file():
    pinned = json.loads(LOGITS_FILE.read_text())
    why = _why(pinned)
    for name, logits in tiny_logits().items():
        want, got = pinned["logits"][name], logits_record(logits)
        assert got["shape"] == want["shape"], (name, why)
        scale = max(abs(x) for x in want["last_position"])
        torch.testing.assert_close(torch.tensor(got["last_position"]), torch.tensor(want["last_position"]),
                                   rtol=0, atol=LOGIT_TOL * scale, msg=lambda m: f"{name}: {m}\n{why}")
        # every logit within LOGIT_TOL of its own size moves a sum by at most LOGIT_TOL times the sum of sizes
        for key in ("sum", "abs_sum"):
            assert abs(got[key] - want[key]) <= LOGIT_TOL * want["abs_sum"], (name, key, got[key], want[key], why)


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_losses_match_the_pinned_file(stage, tmp_path):
    pinned = json.loads(LOSSES_FILE.read_text())
    want = pinned["losses"][stage]
    got = stage_losses(stage, tmp_path)
    assert got[0] == pytest.approx(want[0], rel=FIRST_LOSS_RTOL), f"{stage}: first loss {got[0]} {_why(pinned)}"
    assert got == pytest.approx(want, rel=LOSS_RTOL), f"{stage}: {got} {_why(pinned)}"
