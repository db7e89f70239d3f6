"""``MoLoRAModel.forward`` reads as its pipeline (embed -> route -> decoder -> loss): its own branch
points, counted by ``scripts/count_forward_branches.py``, stay at today's figure. Layout choices live
in the token layout types, the frozen-row split in ``molora/frozen_rows.py``, ``touch_all`` in
``molora/touch_all.py``."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORWARD_BRANCHES = 2  # the call's plan split off, and the prefill / decode-step embedding


def _counter():
    spec = importlib.util.spec_from_file_location("count_forward_branches",
                                                  ROOT / "scripts" / "count_forward_branches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_counter_counts_each_kind_of_branch():
    counter = _counter()
    code = ast.parse("def f(x):\n"
                     "    if x and y or z:\n        pass\n    elif x:\n        pass\n"  # if, elif, and, or
                     "    a = 1 if x else 2\n"  # ternary
                     "    for i in x:\n        pass\n    while x:\n        pass\n"
                     "    try:\n        pass\n    except A:\n        pass\n    except B:\n        pass\n"
                     "    return [i for i in x if i if not i]\n")
    assert counter.branch_points(counter.find(code, "f")) == 11


def test_forward_reads_as_its_pipeline():
    counts = _counter().count()
    assert counts["molora/model.py:MoLoRAModel.forward"] <= FORWARD_BRANCHES
    # the steps it names are there to be counted
    for step in ("molora/token_layout.py:make_layout", "molora/frozen_rows.py:loss_apart",
                 "molora/touch_all.py:join_every_trainable", "molora/plan.py:choose_plan"):
        assert step in counts


def test_the_cross_entropy_is_written_once():
    """Every layout's loss goes through ``molora.loss.next_token_loss``; no other module of the
    package computes a cross-entropy of its own (DPO's ``sequence_logps`` is a per-row log-probability
    sum, not a cross-entropy)."""
    sources = [p for d in ("molora", "adapters", "encoders", "stages", "eval") for p in (ROOT / d).rglob("*.py")]
    writers = sorted(str(p.relative_to(ROOT)) for p in sources if "cross_entropy(" in p.read_text())
    assert writers == ["molora/loss.py"]
