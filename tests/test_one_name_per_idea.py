"""One name per idea: the ignored label, the label shift and the prompts each live in one module and
every user reads them from there; the module and class names that used to clash are distinct, and
the dead names are gone."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
from pathlib import Path

import pytest
import torch

from molora.loss import IGNORE_INDEX, count_label_tokens, next_token_targets
from molora.prompts import ASR_PROMPT, CHARTQA_SUFFIX, EARNINGS22_PROMPT, VQA_SUFFIX

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("molora", "encoders", "adapters", "stages", "eval")


def _sources():
    for d in PACKAGE_DIRS:
        for path in sorted((REPO / d).rglob("*.py")):
            yield path.relative_to(REPO).as_posix(), ast.parse(path.read_text(), str(path))


def _docstrings(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


# -- the label shift --------------------------------------------------------------------------------

def test_next_token_targets_is_the_hand_written_shift():
    labels = torch.tensor([[1, 2, 3, -100], [5, -100, 7, 8]])
    assert next_token_targets(labels).tolist() == [[2, 3, -100, -100], [-100, 7, 8, -100]]
    assert int(count_label_tokens(labels)) == 4
    assert labels.tolist() == [[1, 2, 3, -100], [5, -100, 7, 8]]  # the input is left alone


def test_a_packed_row_never_predicts_the_next_rows_first_token():
    labels = torch.tensor([[-100, 11, 12, 13, 20, 21, 22]])  # rows [0, 4) and [4, 7)
    cu = torch.tensor([0, 4, 7], dtype=torch.int32)
    assert next_token_targets(labels, cu).tolist() == [[11, 12, 13, -100, 21, 22, -100]]
    assert next_token_targets(labels).tolist() == [[11, 12, 13, 20, 21, 22, -100]]
    assert int(count_label_tokens(labels, cu)) == 5


def test_the_label_shift_and_the_ignored_label_are_written_once():
    """No module but molora/loss.py shifts labels by hand or writes -100."""
    shifts, literals = [], []
    for rel, tree in _sources():
        if rel == "molora/loss.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and \
                    isinstance(node.operand, ast.Constant) and node.operand.value == 100:
                literals.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Subscript) and "label" in ast.unparse(node.value) and \
                    ast.unparse(node.slice) in (":, 1:", "..., 1:"):
                shifts.append(f"{rel}:{node.lineno}")
    assert literals == [] and shifts == []


def test_processor_collator_and_loss_agree_on_the_ignored_label():
    from conftest import double_tiny

    from molora.data.manifest import Sample
    from molora.stages.collate import Collator

    model, proc = double_tiny()
    convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
             [{"role": "user", "content": "what is two and two?"}, {"role": "assistant", "content": "four"}]]
    batch = proc(convs, return_labels=True)
    labels = batch["labels"]
    assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()  # padding
    assert (labels[:, 0] == IGNORE_INDEX).all()  # the prompt
    collated = Collator(proc)([Sample(messages=c, kind="chat", source=f"t:{i}") for i, c in enumerate(convs)])
    assert torch.equal(collated["labels"], labels)
    assert int(collated["num_label_tokens"]) == int(count_label_tokens(labels)) > 0
    with torch.no_grad():
        logits = model(**batch).logits
        summed = model(**batch, return_logits=False, loss_reduction="sum").loss
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), next_token_targets(labels).flatten(),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(summed, want, rtol=1e-10, atol=1e-10)  # float64


# -- prompts ----------------------------------------------------------------------------------------

def test_prompts_are_written_once():
    """Every prompt string of the package is a constant of molora/prompts.py (docstrings may quote them)."""
    prompts = (ASR_PROMPT, EARNINGS22_PROMPT, VQA_SUFFIX.strip(), CHARTQA_SUFFIX.strip())
    copies = []
    for rel, tree in _sources():
        if rel == "molora/prompts.py":
            continue
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs and \
                    any(p in node.value for p in prompts):
                copies.append(f"{rel}:{node.lineno}")
    assert copies == []


def test_data_eval_and_chat_use_the_same_prompt_object(tmp_path):
    from molora.chat_cli import prompt_for
    from molora.data.manifest import read_manifest
    from molora.eval.protocols import PROTOCOLS, AsrSet

    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "hello"}\n')
    sample = read_manifest(tmp_path / "m.jsonl")[0]
    assert sample.messages[0]["content"][1]["text"] is ASR_PROMPT
    assert AsrSet("x").prompt is ASR_PROMPT
    assert {s.prompt for p in PROTOCOLS.values() for s in p.sets} <= {ASR_PROMPT, EARNINGS22_PROMPT}
    assert prompt_for("", [], ["clip.wav"]) is ASR_PROMPT


# -- names ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gone, present", [("molora.layout", "molora.token_layout"),
                                           ("molora.layouts", "molora.checkpoint_layouts"),
                                           ("molora.stages.manifest", "molora.data.manifest"),
                                           ("molora.stages.hf_datasets", "molora.data.hf_datasets")])
def test_module_names_no_longer_clash_and_old_paths_are_gone(gone, present):
    assert importlib.util.find_spec(gone) is None
    assert importlib.util.find_spec(present) is not None


def test_the_two_routes_have_distinct_names():
    from molora import config
    from molora.adapters import route

    assert not hasattr(config, "Route") and not hasattr(route, "Route")
    assert [f.name for f in dataclasses.fields(config.RouterEntry)] == ["adapter", "audio_projector"]
    assert hasattr(route.TokenRoute, "build")
    assert all(isinstance(e, config.RouterEntry) for e in config.MoLoRAConfig.preset("tiny").router.values())


def test_the_loss_step_is_named_for_what_it_returns():
    layout = importlib.import_module("molora.token_layout")
    assert hasattr(layout.TokenLayout, "logits_and_loss") and not hasattr(layout, "head")


@pytest.mark.parametrize("module, name", [("molora.backbones.phi3", "LINEARS"),
                                          ("molora.backbones.phi3", "MODEL_TYPES"),
                                          ("molora.config", "INPUT_TYPES"),
                                          ("molora.loss", "causal_lm_loss"),
                                          ("molora.packing", "packed_targets"),
                                          ("molora.processor", "IGNORE"),
                                          ("molora.stages.collate", "IGNORE_INDEX"),
                                          ("molora.eval.docvqa", "DOCVQA_SUFFIX")])
def test_dead_and_duplicate_names_are_gone(module, name):
    assert name not in vars(importlib.import_module(module))


def test_the_trainer_context_holds_only_what_losses_read():
    from molora.stages.trainer import Context

    assert [f.name for f in dataclasses.fields(Context)] == ["recipe", "reference_params"]
