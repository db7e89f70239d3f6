"""Run by tests/test_grad_sync.py under torchrun, two processes: for each case, every process's
micro-batches (rows of the test's corpora, chosen per process) go forward and backward through
``GradSync`` in DDP mode and in the hand-written mode, from the same weights; each process writes
what the test compares to OUT/rank-R.json."""
from __future__ import annotations

import json
import sys

import torch

from molora.stages.collate import Collator
from molora.stages.freeze import apply_plan
from molora.stages.grad_sync import GradSync
from molora.stages.recipe import load_recipe
from molora.stages.table import stage
from molora.stages.trainer import Context, Distributed, build_model, clip_gradients, load_samples

# mixed corpus rows: i % 4 == 0 text, 1 image, 2 audio, 3 image + audio; preference rows: 0 image, 1 audio,
# 2 image + audio, 3 text. Per case: (stage, corpus, rank 0's micro-batches, rank 1's); [] is a micro-batch
# with no row left (every one skipped)
CASES = {
    # rank 0's only audio row is in the micro-batch that accumulates under no_sync; rank 1 never reaches the
    # audio projector or the speech LoRA, and its last micro-batch holds text rows only (a loss no trainable
    # tensor reaches); text rows beside others take the frozen-row split
    "audio_on_one_process": ("sft", "mixed", [[2, 0], [1, 4]], [[5], [0, 4]]),
    "empty_last_micro_batch": ("sft", "mixed", [[3, 1], [6]], [[7], []]),
    "dpo": ("dpo", "preference", [[0, 1]], [[2, 3]]),
}


CASES_PLAN = ("vision_lora", "speech_lora", "vision_projector", "speech_projector", "vision_speech_projector")
SECOND_PLAN = ("speech_lora", "speech_projector")


def main(mixed: str, preference: str, out: str) -> None:
    dist = Distributed(cpu=True)
    assert dist.world == 2
    data = {"mixed": mixed, "preference": preference}
    calls = []
    average = dist.average_gradients
    dist.average_gradients = lambda params: (calls.append(1), average(params))
    report = {}
    # one model for every case (no case steps the optimiser): the tiny preset, the sft / dpo plan
    recipe = load_recipe("tiny-sft", {"data.train": mixed})
    model, processor = build_model(recipe.model, recipe.seed)
    model.train()
    # then another sub-step's plan: DDP wraps another set of tensors (every wrapper before it closed)
    for plan, checkpointing, cases in ((CASES_PLAN, False, list(CASES)), (CASES_PLAN, True, list(CASES)),
                                       (SECOND_PLAN, False, ["audio_on_one_process"])):
        apply_plan(model, list(plan))
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        model.enable_activation_checkpointing(checkpointing)
        for case in cases:
            stage_name, corpus, *per_rank = CASES[case]
            recipe = load_recipe(f"tiny-{stage_name}", {"data.train": data[corpus]})
            st = stage(stage_name)
            assert recipe.substeps[0].train == list(CASES_PLAN), recipe.substeps
            ctx = Context(recipe)
            if st.paired:
                ctx.reference_params = {n: p.detach().clone() for n, p in trainable.items()}
            samples = load_samples(recipe.data, "train")
            coll = Collator(processor, pack=not st.paired)
            collate = coll.collate_preference if st.paired else coll
            micro = [collate([samples[j] for j in ids]) if ids else None for ids in per_rank[dist.rank]]
            total = dist.all_sum([float(sum(st.count(b) for b in micro if b is not None))])[0]
            last = micro[-1]
            no_grad_last = last is not None and not st.loss(model, last, ctx)[0].requires_grad
            model.zero_grad(set_to_none=True)
            result = {"no_grad_last": no_grad_last, "last_empty": last is None}
            for mode in ("manual", "ddp"):
                model.zero_grad(set_to_none=True)
                sync = GradSync(model, st.loss, ctx, dist, mode)
                before = len(calls)
                loss_sum, _ = sync.backward(micro, total)
                sync.reduce(list(trainable.values()))
                grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in trainable.items()}
                norm = clip_gradients(list(trainable.values()), 1e-3, dist, False)
                result[mode] = {"wrapped": type(sync.ddp).__name__ if sync.ddp is not None else None,
                                "hand_average_called": len(calls) > before, "loss_sum": loss_sum, "norm": norm,
                                "clipped": {n: p.grad.clone() for n, p in trainable.items() if p.grad is not None}}
                result[mode]["grads"] = grads
                sync.close()
            m, d = result["manual"], result["ddp"]
            result["different"] = sorted(n for n in trainable if not torch.equal(m["grads"][n], d["grads"][n]))
            result["different_clipped"] = sorted(n for n in d["clipped"] if not torch.equal(m["clipped"][n],
                                                                                          d["clipped"][n]))
            result["max_abs_difference"] = max(float((m["grads"][n] - d["grads"][n]).abs().max()) for n in trainable)
            # a tensor this process never reached but the other did carries the other's gradient
            result["audio_projector_grad"] = max(float(g.abs().max()) for n, g in d["grads"].items()
                                                 if n.startswith("audio_embed.audio_projection.speech"))
            for mode in ("manual", "ddp"):
                for key in ("grads", "clipped"):
                    del result[mode][key]
            report[f"{case}{'+checkpointing' if checkpointing else ''}{'+second_plan' if plan != CASES_PLAN else ''}"] = \
                result
    with open(f"{out}/rank-{dist.rank}.json", "w") as fh:
        json.dump(report, fh, indent=1)
    dist.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:4])
