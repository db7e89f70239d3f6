"""Modalities are entries (molora/modalities): image and audio are two, and a third one -- here a
test-only "sensor" modality (frames of a 6-channel signal, one placeholder token per frame) -- is one
entry plus a config change. The processor, the model, the router, the freeze plans and checkpoint
I/O pick it up with no other edit."""
from __future__ import annotations

import itertools
import os

import pytest
import torch
from torch import nn

from conftest import drawn_image, randomize_, synth_audio
from molora import MoLoRAConfig, MoLoRAModel, MoLoRAProcessor
from molora.config import LoraSpec, RouterEntry
from molora.modalities import MODALITIES, Modality, register_modality
from molora.stages.freeze import apply_plan, component_of

SENSOR_TOKEN = 264  # an unused row of the tiny vocabulary


class SensorModality(Modality):
    name = content_type = input_type = "sensor"
    module_name = "sensor_embed"
    input_keys = ("sensor_values", "sensor_lengths")
    count_key = "sensor_lengths"
    hint = "array [frames, channels]"

    def token_id(self, config) -> int:
        return config.modalities["sensor"]["token_id"]

    def components(self) -> dict[str, str]:
        return {"sensor_encoder": r"sensor_embed\.encoder\.", "sensor_projector": r"sensor_embed\.projector\."}

    def build(self, config):
        channels = config.modalities["sensor"]["channels"]
        return nn.ModuleDict({"encoder": nn.Sequential(nn.Linear(channels, 32), nn.GELU()),
                              "projector": nn.Linear(32, config.backbone.hidden_size)})

    def embed(self, module, inputs, ctx, device, dtype):
        values, lengths = inputs["sensor_values"].to(device, dtype), inputs["sensor_lengths"]
        feats = module["projector"](module["encoder"](values))
        return [f[: int(n)] for f, n in zip(feats, lengths)]

    def load(self, value, config, item):  # a manifest's file of numbers, one frame a line
        import numpy as np

        from molora.errors import MediaError

        if not isinstance(value, (str, os.PathLike)):
            return value
        try:
            return np.loadtxt(value, ndmin=2, dtype=np.float32)
        except (OSError, ValueError) as e:
            raise MediaError(f"not a file of sensor frames ({e})", item) from None

    def processor(self, config):
        def part(items):
            arrays = [torch.as_tensor(x, dtype=torch.float32) for x in items]
            lengths = torch.tensor([a.shape[0] for a in arrays])
            return {"sensor_values": nn.utils.rnn.pad_sequence(arrays, batch_first=True),
                    "sensor_lengths": lengths}
        return part


@pytest.fixture()
def sensor_config():
    register_modality(SensorModality())
    base = MoLoRAConfig.preset("tiny")
    router = dict(base.router)  # the reference routes, plus one for every type that holds a sensor
    names = ["image", "speech", "sensor"]
    for k in range(1, 4):
        for combo in itertools.combinations(names, k):
            if "sensor" in combo:
                router["+".join(combo)] = RouterEntry(adapter="sensor",
                                                audio_projector="speech" if "speech" in combo else None)
    cfg = base.replace(modalities={"image": {}, "audio": {}, "sensor": {"token_id": SENSOR_TOKEN, "channels": 6}},
                       adapters={**base.adapters, "sensor": LoraSpec(r=4, alpha=8)}, router=router)
    yield cfg
    MODALITIES.pop("sensor")


def _sensor(frames, seed):
    return torch.randn(frames, 6, generator=torch.Generator().manual_seed(seed)).numpy()


def _convs():
    def user(*parts):
        return [{"role": "user", "content": list(parts)}]
    text = {"type": "text", "text": "what happened?"}
    return [user({"type": "sensor", "sensor": _sensor(7, 1)}, text),
            user({"type": "image", "image": drawn_image(80, 60, 1)}, {"type": "sensor", "sensor": _sensor(3, 2)}),
            user({"type": "audio", "audio": (synth_audio(0.8, seed=3), 16000)}, text),
            user(text)]


def test_a_third_modality_is_an_entry_and_a_config_change(sensor_config, tmp_path):
    cfg = sensor_config
    torch.manual_seed(0)
    model = MoLoRAModel(cfg).eval()
    randomize_(model, seed=3)  # adapters non-zero, so routing matters
    proc = MoLoRAProcessor.from_config(cfg)
    batch = proc(_convs())
    assert batch["sensor_lengths"].tolist() == [7, 3]
    assert ((batch["input_ids"] == SENSOR_TOKEN).sum(-1)).tolist() == [7, 3, 0, 0]
    assert model.row_types(batch["input_ids"]) == ["sensor", "image+sensor", "speech", "text"]
    with torch.no_grad():
        logits = model(**batch).logits
        for i, conv in enumerate(_convs()):  # every row gets what it gets alone
            solo = proc([conv])
            real = batch["attention_mask"][i].bool()
            torch.testing.assert_close(logits[i][real], model(**solo).logits[0], rtol=1e-4, atol=1e-4)
        # the sensor features matter: other readings give other logits
        other = proc([[{"role": "user", "content": [{"type": "sensor", "sensor": _sensor(7, 9)},
                                                    {"type": "text", "text": "what happened?"}]}]])
        assert not torch.allclose(model(**other).logits[0], logits[0][batch["attention_mask"][0].bool()])

    # training: the freeze plans know its components; gradients reach its encoder and its adapter
    assert component_of("sensor_embed.projector.weight") == "sensor_projector"
    apply_plan(model, ["sensor_encoder", "sensor_projector", "sensor_lora"])
    model.train()
    train_batch = proc([[*c, {"role": "assistant", "content": "a bump"}] for c in _convs()], return_labels=True)
    model(**train_batch).loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("sensor_embed.encoder.") for n in got)
    assert any(".lora_B.sensor." in n for n in got) and not any(".lora_B.vision." in n for n in got)

    # checkpoint I/O: saved and loaded like the others
    model.eval().save_pretrained(tmp_path / "m")
    again = MoLoRAModel.from_pretrained(str(tmp_path / "m")).eval()
    assert again.config.modalities == cfg.modalities
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, model(**batch).logits)


def test_every_input_type_needs_a_route(sensor_config):
    from molora.errors import ConfigError

    routes = {k: v for k, v in sensor_config.router.items() if k != "speech+sensor"}
    with pytest.raises(ConfigError, match=r"router\['speech\+sensor'\]"):
        sensor_config.replace(router=routes)
    with pytest.raises(ConfigError, match="unknown modality 'lidar'"):
        MoLoRAConfig.preset("tiny").replace(modalities={"image": {}, "audio": {}, "lidar": {}})
