"""The transformers-native export (``layout="phi4_multimodal"``) is used by transformers alone, offline:
``AutoProcessor.from_pretrained(dir)`` gives molora's input ids, pixels and audio features, and
``Phi4MultimodalForCausalLM.from_pretrained(dir)`` (eager attention) with the PEFT adapters gives
molora's logits, for text, image and audio prompts; an untied output head travels with it."""
from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import drawn_image, randomize_, synth_audio, tiny_config, user_content
from molora import MoLoRAModel, MoLoRAProcessor
from molora.cli import main as cli

TOL = 1e-4  # float32 logits of two implementations of the same computation


def _config():
    """The tiny preset with the real model's 448-px crops (transformers' processor counts image tokens
    for 448-px crops), transformers' mel filter bank and an untied output head."""
    return tiny_config().replace(vision={"image_size": 448, "dynamic_hd": 4}, audio={"mel_filter": "transformers"},
                                 backbone={"tie_word_embeddings": False})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = _config()
    torch.manual_seed(0)
    model = MoLoRAModel(cfg).eval()
    randomize_(model, seed=5)
    d = tmp_path_factory.mktemp("native") / "export"
    model.save_pretrained(d, layout="phi4_multimodal")
    processor = MoLoRAProcessor.from_config(cfg)
    processor.save_pretrained(d)
    return d, model, processor


def _offline(monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


def _transformers_side(d):
    from peft import PeftModel
    from transformers import AutoProcessor, Phi4MultimodalForCausalLM

    processor = AutoProcessor.from_pretrained(str(d))
    base = Phi4MultimodalForCausalLM.from_pretrained(str(d), attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(base, str(d / "speech-lora"), adapter_name="speech")
    model.load_adapter(str(d / "vision-lora"), adapter_name="vision")
    return processor, model.eval()


def _transformers_logits(model, batch, adapter):
    with torch.no_grad():
        if adapter is None:
            with model.disable_adapter():
                return model(**batch).logits
        model.set_adapter(adapter)
        return model(**batch).logits


PROMPTS = {  # content parts, the adapter molora's router picks for the row
    "text": (["hello there, what is the total?"], None),
    "image": ([drawn_image(500, 300, 2), "what is it?"], "vision"),
    "audio": ([(synth_audio(1.2, seed=3), 16000), "Transcribe the audio clip into text."], "speech"),
}


def _compare(d, model, processor, monkeypatch):
    _offline(monkeypatch)
    hf_processor, hf_model = _transformers_side(d)
    assert type(hf_processor).__name__ == "Phi4MultimodalProcessor"
    assert (hf_processor.image_token_id, hf_processor.audio_token_id) == (261, 262)
    for name, (parts, adapter) in PROMPTS.items():
        messages = [{"role": "user", "content": user_content(*parts)}]
        ours = processor(messages)
        text = processor.apply_chat_template(messages)
        text = re.sub(r"<\|image_\d+\|>", hf_processor.image_token, text)
        text = re.sub(r"<\|audio_\d+\|>", hf_processor.audio_token, text)
        images = [p for p in parts if hasattr(p, "size")] or None
        audio = [p[0] for p in parts if isinstance(p, tuple)] or None
        theirs = hf_processor(text=text, images=images, audio=audio, sampling_rate=16000, return_tensors="pt")
        assert torch.equal(theirs["input_ids"], ours["input_ids"]), name
        for key in ("image_pixel_values", "image_attention_mask", "image_sizes", "audio_embed_sizes"):
            if key in ours:
                assert torch.equal(theirs[key].to(ours[key].dtype), ours[key]), (name, key)
        if "audio_input_features" in ours:  # log-mel in float32
            assert (theirs["audio_input_features"] - ours["audio_input_features"]).abs().max().item() <= 1e-3, name
        expected = _transformers_logits(hf_model, {k: v for k, v in theirs.items() if k != "num_img_tokens"}, adapter)
        with torch.no_grad():
            got = model(**ours).logits
        assert (got - expected).abs().max().item() <= TOL, name


def test_transformers_loads_the_saved_folder_offline_with_its_own_processor(saved, monkeypatch):
    d, model, processor = saved
    files = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
            "vision-lora", "speech-lora"} <= files
    tokenizer_config = json.loads((d / "tokenizer_config.json").read_text())
    assert (tokenizer_config["image_token"], tokenizer_config["audio_token"]) == ("<|endoftext10|>", "<|endoftext11|>")
    _compare(d, model, processor, monkeypatch)


def test_the_untied_output_head_is_transformers_lm_head(saved):
    from safetensors import safe_open

    d, model, _ = saved
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("lm_head.weight"), model.lm_head.weight)
    assert json.loads((d / "config.json").read_text())["tie_word_embeddings"] is False


def test_molora_convert_writes_a_folder_transformers_loads(saved, tmp_path, monkeypatch):
    d, model, processor = saved
    src = tmp_path / "src"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    out = tmp_path / "native"
    assert cli(["convert", str(src), str(out), "--layout", "phi4_multimodal"]) == 0
    _compare(out, model, MoLoRAProcessor.from_pretrained(str(out)), monkeypatch)


@pytest.mark.parametrize("name", ["phi4-multimodal", "phi4-mini-reasoning-multimodal", "phi4-14b-multimodal", "small"])
def test_every_preset_exports_transformers_names_and_shapes(name):
    """At full size on the meta device: the native export's tensors are exactly transformers' model's
    (its config from `to_transformers_config`), the 14B preset's untied ``lm_head`` included."""
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    from molora import MoLoRAConfig
    from molora.checkpoint_layouts import to_transformers_config, to_transformers_state_dict

    cfg = MoLoRAConfig.preset(name)
    hf_cfg = Phi4MultimodalConfig(**{k: v for k, v in to_transformers_config(cfg).items()
                                     if k not in ("model_type", "architectures")})
    with torch.device("meta"):
        ours = to_transformers_state_dict(MoLoRAModel(cfg).state_dict())
        ref = Phi4MultimodalForCausalLM(hf_cfg)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()
                if not (cfg.backbone.tie_word_embeddings and k == "lm_head.weight")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    assert ("lm_head.weight" in ours) == (not cfg.backbone.tie_word_embeddings)
