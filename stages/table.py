"""The stages, in one table: what each trains on, its sub-steps with their freeze plans, its loss.

The recipes (``stages/recipes/*.yaml``; a recipe without ``substeps`` takes the table's), the CLI
(``molora train --stage NAME``, ``molora train --list-stages``) and the quickstart all read this
table. The defaults follow the Phi-4-multimodal report (``../shared``-style summary in the README):

- vision: projector alignment -> encoder + projector -> vision LoRA + encoder + projector;
- speech: pre-training (audio encoder + speech projector) -> post-training (speech projector + speech LoRA);
- joint: the vision side (encoder, projector, LoRA) and the vision-speech audio projector, on mixed rows;
- sft: the adapters and the projectors, on every kind of row;
- dpo: the same parts, with the DPO loss against the weights the stage started from.

A new stage is one ``Stage`` entry here (and a recipe that names it). A stage with settings of its
own names their dataclass in ``settings``: a recipe's section named after the stage (``dpo: {beta: 0.2}``,
``dpo.beta=0.2``) is checked against its fields (unknown keys, types, the class's ``out_of_range``) and
reaches the loss as ``ctx.recipe.settings``; stages/recipe.py knows no stage by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from molora.errors import ConfigError

from .losses import DPOSettings, dpo_loss, label_count, lm_loss, pair_count

__all__ = ["Stage", "STAGES", "stage"]

ADAPTERS_AND_PROJECTORS = ["vision_lora", "speech_lora", "vision_projector", "speech_projector",
                           "vision_speech_projector"]


@dataclass(frozen=True)
class Stage:
    name: str
    data_kinds: tuple[str, ...]  # manifest row kinds it trains on
    substeps: tuple[dict, ...]  # {name, train: [components], fraction of max_steps}
    loss: Callable  # (model, batch, ctx) -> (summed loss, metrics)
    count: Callable = label_count  # what the loss is summed over in a batch (divides the global sum)
    paired: bool = False  # batches of chosen / rejected pairs
    description: str = ""
    settings: type | None = None  # dataclass of the recipe section named after the stage (defaults, types)

    def default_substeps(self) -> list[dict]:
        return [dict(s, train=list(s["train"])) for s in self.substeps]


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("vision", ("vqa", "chat"), (
        {"name": "projector_alignment", "train": ["vision_projector"], "fraction": 0.2},
        {"name": "encoder_projector", "train": ["vision_encoder", "vision_projector"], "fraction": 0.3},
        {"name": "vision_lora", "train": ["vision_lora", "vision_encoder", "vision_projector"], "fraction": 0.5}),
        lm_loss, description="image rows: projector alignment, then encoder + projector, then the vision LoRA"),
    Stage("speech", ("asr", "chat"), (
        {"name": "pretraining", "train": ["audio_encoder", "speech_projector"], "fraction": 0.5},
        {"name": "post_training", "train": ["speech_projector", "speech_lora"], "fraction": 0.5}),
        lm_loss, description="speech rows: encoder + projector pre-training, then projector + speech LoRA"),
    Stage("joint", ("chat", "vqa", "asr"), (
        {"name": "vision_speech", "train": ["vision_encoder", "vision_projector", "vision_lora",
                                            "vision_speech_projector"], "fraction": 1.0},),
        lm_loss, description="image+speech rows: the vision side and the vision-speech audio projector"),
    Stage("sft", ("chat", "vqa", "asr"), (
        {"name": "sft", "train": ADAPTERS_AND_PROJECTORS, "fraction": 1.0},),
        lm_loss, description="instruction tuning of the adapters and projectors on every kind of row"),
    Stage("dpo", ("preference",), (
        {"name": "dpo", "train": ADAPTERS_AND_PROJECTORS, "fraction": 1.0},),
        dpo_loss, count=pair_count, paired=True, settings=DPOSettings,
        description="preference pairs: DPO against the weights the stage started from"),
]}


def stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"must be one of {', '.join(STAGES)}, got {name!r}", "stage")
    return STAGES[name]
