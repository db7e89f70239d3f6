"""The quickstart's DPO data and measure: pairs from a model's own wrong answers (judged by the
evaluators' rules), written in their data root, and DPO's reward on held-out pairs."""
from __future__ import annotations

import json

import pytest
import torch

from datafactory import corpus
from molora import MoLoRAModel, MoLoRAProcessor
from molora.stages.evaluation import preference_metrics
from molora.data.manifest import Sample, read_manifest
from molora.synthetic.mistake_pairs import is_right, is_wrong, mistake_pairs, write_pairs


def vqa(answer: str, source: str) -> Sample:
    msgs = [{"role": "user", "content": [{"type": "image", "image": "/d/x.png"}, {"type": "text", "text": "q"}]},
            {"role": "assistant", "content": answer}]
    return Sample(msgs, "vqa", source, answers=[answer])


def test_right_and_wrong_follow_the_metrics():
    chart = vqa("82", "/c/charts-0-v1-default/test.jsonl:1")
    doc = vqa("Lisbon", "/c/documents-0-v1-default/test.jsonl:1")
    assert is_right(chart, "82.0") and is_right(chart, "80") and is_wrong(chart, "44")  # 5% relaxed accuracy
    assert is_right(doc, "lisbon") and is_right(doc, "Lisbn") and is_wrong(doc, "Prague")  # ANLS >= 0.5
    assert not is_wrong(chart, "  ") and not is_right(chart, "")  # an empty answer makes no pair
    asr = Sample([{"role": "user", "content": "x"}, {"role": "assistant", "content": "We hold this coat."}], "asr",
                 "s:1")
    assert is_right(asr, "we hold this coat") and is_wrong(asr, "we hold this goat")
    pairs = mistake_pairs([chart, doc, chart], ["44", "Lisbon", ""])
    assert [(p.chosen, p.rejected, p.kind, p.source) for p in pairs] == [("82", "44", "preference", chart.source)]
    assert pairs[0].messages == chart.messages[:-1]  # the prompt, ending with the user turn


def test_pairs_are_written_inside_their_data_root(tmp_path):
    data = corpus(tmp_path / "corpus", "vqa", n=3)
    samples = read_manifest(data)
    path = write_pairs(tmp_path / "pairs.jsonl", mistake_pairs(samples, ["nope"] * 3))
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    assert rows[0]["messages"][0]["content"][0]["image"] == "corpus/red.png"
    back = read_manifest(path)  # default checks: no allow_outside_root needed
    assert [s.rejected for s in back] == ["nope"] * 3 and [s.chosen for s in back] == ["red", "green", "blue"]


@pytest.fixture(scope="module")
def trained_dpo(tmp_path_factory):
    from molora.stages.recipe import load_recipe
    from molora.stages.trainer import train

    tmp = tmp_path_factory.mktemp("dpo")
    data = corpus(tmp / "data", "preference")
    train(load_recipe("tiny-dpo", {"data.train": str(data), "max_steps": 8, "seed": 1, "training.lr": 3e-3}), tmp / "out",
          progress=False)
    rows = [json.loads(l) for l in (tmp / "out" / "metrics.jsonl").read_text().splitlines()]
    return read_manifest(data), tmp / "out" / "final", rows


@pytest.mark.slow
def test_held_out_measure_is_zero_against_itself_and_follows_dpo(trained_dpo):
    pairs, final, rows = trained_dpo
    from molora import MoLoRAConfig

    torch.manual_seed(1)  # tiny-dpo starts from the tiny preset built with the recipe's seed
    reference = MoLoRAModel(MoLoRAConfig.preset("tiny"))
    processor = MoLoRAProcessor.from_pretrained(str(final))
    same = preference_metrics(reference, reference, processor, pairs, beta=0.1)
    assert same["pairs"] == 8 and same["reward_margin"] == 0.0 and same["reward_accuracy"] == 0.0
    assert same["chosen_preferred_before"] == same["chosen_preferred_after"]
    policy = MoLoRAModel.from_pretrained(str(final))
    after = preference_metrics(policy, reference, processor, pairs, beta=0.1)
    # on the pairs it trained on, the measure agrees with what the trainer logged at its last steps
    assert after["reward_margin"] > 0.5 and after["reward_accuracy"] >= 0.75
    assert rows[-1]["reward_margin"] > 0.5
    assert after["chosen_preferred_after"] >= after["chosen_preferred_before"]
