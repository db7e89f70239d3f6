"""The data path reads the model's modality entries: a test-only third modality ("sensor",
tests/test_modalities.py: a file of numbers -> encoder -> projector -> one placeholder per frame)
trains with `molora train` from a JSONL manifest, and a model may leave a modality out (an
image-only model trains with activation checkpointing and generates)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import drawn_image
from datafactory import corpus, write_manifest
from molora import Chat, MoLoRAConfig, MoLoRAModel, MoLoRAProcessor
from molora.cli import main as molora
from molora.config import RouterEntry
from molora.errors import ConfigError, MoLoRAError
from molora.stages.freeze import apply_plan, component_of
from molora.stages.recipe import load_recipe
from molora.stages.trainer import build_model, train
from test_modalities import SENSOR_TOKEN, sensor_config  # noqa: F401 (a fixture: registers "sensor" while it lasts)

SENSOR_PLAN = ["sensor_encoder", "sensor_projector", "sensor_lora"]


def sensor_manifest(root: Path, n: int = 8) -> Path:
    """Chat rows whose user turn is a file of 6-channel frames (a text file, one frame a line)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        up = i % 2 == 1
        np.savetxt(root / f"s{i}.txt", rng.normal(1.0 if up else -1.0, 0.5, size=(3 + i % 4, 6)))
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "sensor", "sensor": f"s{i}.txt"},
                                         {"type": "text", "text": "up or down?"}]},
            {"role": "assistant", "content": "up" if up else "down"}]})
    return write_manifest(root / "train.jsonl", rows)


def with_missing_file(manifest: Path) -> Path:
    """The manifest plus a row whose sensor file does not exist (the collator lists it as skipped)."""
    row = {"messages": [{"role": "user", "content": [{"type": "sensor", "sensor": "gone.txt"}]},
                        {"role": "assistant", "content": "up"}]}
    manifest.write_text(manifest.read_text() + json.dumps(row) + "\n")
    return manifest


def sensor_recipe(path: Path, config: MoLoRAConfig, manifest: Path) -> Path:
    d = config.to_dict()
    recipe = {"name": "sensor-sft", "stage": "sft", "max_steps": 3, "seed": 0,
              "model": {"preset": "tiny", "config": {k: d[k] for k in ("modalities", "adapters", "router")}},
              "data": {"train": str(manifest)},
              "training": {"micro_batch_size": 3, "lr": 1.0e-2, "warmup_steps": 0},  # 9 rows: 3 batches
              "substeps": [{"name": "sensor", "train": SENSOR_PLAN, "fraction": 1.0}]}
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def test_a_third_modality_trains_with_molora_train_from_a_manifest(sensor_config, tmp_path):
    manifest = with_missing_file(sensor_manifest(tmp_path / "data"))
    recipe = sensor_recipe(tmp_path / "sensor-sft.yaml", sensor_config, manifest)
    built, _ = build_model(load_recipe(str(recipe)).model, 0)  # the run's starting weights (same seed)
    before = {k: v.detach().clone() for k, v in built.state_dict().items()}

    assert molora(["train", "--recipe", str(recipe), "--output-dir", str(tmp_path / "out"), "--cpu"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    skipped = json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"]
    assert [(Path(x["item"]).name, "not a file of sensor frames" in x["reason"]) for x in skipped] == [("gone.txt", True)]

    final = MoLoRAModel.from_pretrained(str(tmp_path / "out" / "final"))
    assert final.config.modalities == sensor_config.modalities
    after = final.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert any(k.startswith("sensor_embed.encoder.") for k in changed)
    assert any(k.startswith("sensor_embed.projector.") for k in changed)
    assert any(".lora_B.sensor." in k for k in changed)
    assert {component_of(k, final.config) for k in changed} <= set(SENSOR_PLAN)


def test_rows_of_a_modality_the_model_lacks_are_refused_before_training(sensor_config, tmp_path):
    manifest = sensor_manifest(tmp_path / "data", n=2)
    recipe = load_recipe("tiny-sft", {"data.train": str(manifest), "max_steps": 1})  # image + audio model
    with pytest.raises(ConfigError, match=r"train.jsonl:1: a 'sensor' part, but the model's modalities are image, "
                                          r"audio"):
        train(recipe, tmp_path / "out", progress=False)
    # the model's modalities, not every registered one, make the freeze plans
    model = MoLoRAModel(MoLoRAConfig.preset("tiny"))
    with pytest.raises(ConfigError, match="sensor_encoder is the sensor modality's, which this model does not have"):
        apply_plan(model, ["sensor_encoder"])


def test_rows_of_a_third_modality_are_not_taken_for_text_rows(sensor_config):
    """A frozen backbone's text-only rows run without autograd (molora/frozen_rows.py); a row holding
    the third modality is not one of them, even when its route has no adapter."""
    router = {**sensor_config.router, "sensor": RouterEntry(adapter=None)}
    model = MoLoRAModel(sensor_config.replace(router=router))
    apply_plan(model, ["sensor_encoder", "sensor_projector"])
    proc = MoLoRAProcessor.from_config(model.config)
    sensor = np.ones((4, 6), dtype=np.float32)
    convs = [[{"role": "user", "content": [{"type": "sensor", "sensor": sensor}]}, {"role": "assistant", "content": "up"}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
             [{"role": "user", "content": [{"type": "image", "image": drawn_image(40, 40)}]},
              {"role": "assistant", "content": "a picture"}]]
    batch = proc(convs, return_labels=True)
    assert (batch["input_ids"][0] == SENSOR_TOKEN).sum() == 4
    out = model.train()(**batch, return_logits=False)
    assert out.plan.split_frozen_rows  # the text row is split off, the sensor row is not
    out.loss.backward()
    assert model.sensor_embed["encoder"][0].weight.grad is not None


def test_chat_limits_every_modality_of_the_model(sensor_config):
    model = MoLoRAModel(sensor_config)
    chat = Chat(model, MoLoRAProcessor.from_config(sensor_config), max_items={"sensor": 1}, max_images=2)
    assert chat.max_items == {"image": 2, "audio": 16, "sensor": 1}
    two = [{"role": "user", "content": [{"type": "sensor", "sensor": np.ones((2, 6), dtype=np.float32)}] * 2}]
    with pytest.raises(MoLoRAError, match=r"conversation\[0\]: 2 sensor items exceed the limit of 1 per conversation"):
        chat.generate(two)


def test_an_image_only_model_trains_with_activation_checkpointing_and_generates(tmp_path):
    image_only = MoLoRAConfig.preset("tiny").replace(modalities={"image": {}})
    assert image_only.modalities == {"image": {}} and image_only.input_types() == ["text", "image"]
    MoLoRAModel(image_only).enable_activation_checkpointing()  # main: AttributeError: audio_embed

    data = corpus(tmp_path / "data", "vqa")
    recipe = load_recipe("tiny-vision", {"data.train": str(data), "max_steps": 2, "training.micro_batch_size": 4,
                                         "training.activation_checkpointing": True,
                                         "model.config": {"modalities": {"image": {}}}})
    train(recipe, tmp_path / "out", progress=False)
    final = tmp_path / "out" / "final"
    model, processor = MoLoRAModel.from_pretrained(str(final)).eval(), MoLoRAProcessor.from_pretrained(str(final))
    assert list(model.config.modalities) == ["image"] and not hasattr(model, "audio_embed")
    assert all(not k.startswith("audio_embed.") for k in model.state_dict())

    chat = Chat(model, processor)
    assert chat.max_items == {"image": 64}
    reply = chat.generate([{"role": "user", "content": [{"type": "image", "image": drawn_image(60, 40)},
                                                        {"type": "text", "text": "which word?"}]}], max_new_tokens=4)
    assert isinstance(reply, str)
    with pytest.raises(MoLoRAError, match="unknown content part type 'audio'"):
        chat.generate([{"role": "user", "content": [{"type": "audio", "audio": (np.zeros(1600), 16000)}]}])


@pytest.mark.parametrize("layout", ["phi4mm", "phi4_multimodal"])
def test_an_image_only_model_is_not_exported_in_the_official_layouts(tmp_path, layout):
    # transformers' Phi4MultimodalForCausalLM would load such a folder with a random audio encoder and
    # only a MISSING table in its log: molora refuses and names the layout that does hold it
    from molora import MoLoRAConfig, MoLoRAModel
    from molora.errors import CheckpointError

    model = MoLoRAModel(MoLoRAConfig.preset("tiny").replace(modalities={"image": {}}))
    with pytest.raises(CheckpointError, match=f"the {layout} layout holds an image and an audio encoder; a model "
                                              "with modalities image is written in the molora layout"):
        model.save_pretrained(tmp_path / layout, layout=layout)
    assert not (tmp_path / layout).exists()
    model.save_pretrained(tmp_path / "molora")  # its own layout keeps it
    assert list(MoLoRAModel.from_pretrained(str(tmp_path / "molora")).config.modalities) == ["image"]
    from molora.convert import convert  # molora convert reads the checkpoint without building the model

    with pytest.raises(CheckpointError, match=f"the {layout} layout holds an image and an audio encoder"):
        convert(str(tmp_path / "molora"), tmp_path / "converted", layout=layout)
    assert not (tmp_path / "converted").exists()
