"""Count the branch points of the functions a training forward runs through (``MoLoRAModel.forward``
with ``labels`` and ``return_logits=False``, the trainer's call), read with ``ast`` from the source.

    python scripts/count_forward_branches.py [--rev REV]

A branch point is an ``if`` / ``elif``, a conditional expression, each extra operand of ``and`` /
``or``, a ``for`` / ``while`` loop, a ``try`` handler, a ``match`` case and a comprehension's
``if``. ``FUNCTIONS`` names the functions of the pipeline under the names they have had (a
function absent at a revision counts nothing there), so ``--rev`` gives the figure of an older
revision (read with ``git show``) beside today's. Decoder layers, LoRA linears and attention
kernels are not counted: they are the same for every layout.
"""
from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (file, qualified name): the steps of a training forward; earlier names kept beside today's
FUNCTIONS = [
    ("molora/model.py", "MoLoRAModel.forward"),
    ("molora/model.py", "MoLoRAModel._plan_and_split"),  # before: plan + frozen-row search
    ("molora/model.py", "MoLoRAModel._forward_split"),  # before: the frozen-row split inside the model
    ("molora/model.py", "MoLoRAModel.plan_call"),
    ("molora/model.py", "MoLoRAModel.media_inputs"),
    ("molora/forward_call.py", "ForwardCall.of"),
    ("molora/forward_call.py", "ForwardCall.__post_init__"),
    ("molora/forward_call.py", "ForwardCall.prefill"),
    ("molora/forward_call.py", "ForwardCall.training_loss"),
    ("molora/forward_call.py", "ForwardCall.returned_cache"),
    ("molora/forward_call.py", "ForwardCall.facts"),
    ("molora/plan.py", "choose_plan"),
    ("molora/frozen_rows.py", "loss_apart"),
    ("molora/touch_all.py", "join_every_trainable"),
    ("molora/token_layout.py", "make_layout"),
    ("molora/token_layout.py", "_packed"),
    ("molora/token_layout.py", "read_positions"),
    ("molora/token_layout.py", "logits_and_loss"),  # before: the loss of every layout in one function
    ("molora/token_layout.py", "TokenLayout.logits_and_loss"),
    ("molora/token_layout.py", "TokenLayout.all_logits_and_loss"),
    ("molora/token_layout.py", "TokenLayout.visible_hidden"),
    ("molora/token_layout.py", "_route_flags"),
    ("molora/token_layout.py", "_narrow"),
    ("molora/token_layout.py", "_given_or_padded_positions"),
    ("molora/token_layout.py", "PaddedLayout.build"),
    ("molora/token_layout.py", "PackedLayout.build"),
    ("molora/token_layout.py", "PackedLayout.from_caller"),
    ("molora/token_layout.py", "PackedLayout.from_padded"),
    ("molora/token_layout.py", "PackedLayout.all_logits_and_loss"),
    ("molora/token_layout.py", "PackedLayout.visible_hidden"),
    ("molora/token_layout.py", "DecodeLayout.build"),
    ("molora/loss.py", "next_token_targets"),
    ("molora/loss.py", "next_token_loss"),
    ("molora/loss.py", "loss_precision"),
]


def branch_points(node: ast.AST) -> int:
    """Branch points in ``node`` and everything nested in it."""
    n = 0
    for sub in ast.walk(node):
        if isinstance(sub, (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While)):
            n += 1
        elif isinstance(sub, ast.BoolOp):
            n += len(sub.values) - 1
        elif isinstance(sub, ast.Try):
            n += len(sub.handlers)
        elif isinstance(sub, ast.Match):
            n += len(sub.cases)
        elif isinstance(sub, ast.comprehension):
            n += len(sub.ifs)
    return n


def find(tree: ast.Module, qualname: str) -> ast.AST | None:
    scope: list[ast.AST] = tree.body
    found = None
    for part in qualname.split("."):
        found = next((s for s in scope if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and s.name == part), None)
        if found is None:
            return None
        scope = found.body
    return found


def source(path: str, rev: str | None) -> str | None:
    if rev is None:
        file = ROOT / path
        return file.read_text() if file.exists() else None
    done = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def count(rev: str | None = None) -> dict[str, int]:
    """{``file:qualname``: branch points} of the functions present at ``rev`` (None: the working tree)."""
    out, trees = {}, {}
    for path, qualname in FUNCTIONS:
        if path not in trees:
            text = source(path, rev)
            trees[path] = None if text is None else ast.parse(text)
        node = None if trees[path] is None else find(trees[path], qualname)
        if node is not None:
            out[f"{path}:{qualname}"] = branch_points(node)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="a git revision (default: the working tree)")
    args = parser.parse_args()
    counts = count(args.rev)
    for name, n in counts.items():
        print(f"{n:4d}  {name}")
    print(f"{sum(counts.values()):4d}  total ({len(counts)} functions)")


if __name__ == "__main__":
    main()
