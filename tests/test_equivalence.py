"""Logits of MoLoRAModel equal transformers' Phi4MultimodalForCausalLM (+ peft adapters) on the
same tiny random weights, for every input type, in every checkpoint layout and back."""
from __future__ import annotations

import pytest
import torch

from conftest import drawn_image, eager_vision, reference_logits, synth_audio, user_content
from molora import MoLoRAModel, MoLoRAProcessor

TOL = 1e-4


def conv(*parts):
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": user_content(*parts)}]


CASES = {
    "text": (conv("hello there"), None),
    "one_image": (conv(drawn_image(56, 56), "what is it?"), "vision"),
    "images_aspect": (conv(drawn_image(90, 40, 1), drawn_image(30, 130, 2), drawn_image(200, 57, 3), "compare"), "vision"),
    "image_many_crops": (conv(drawn_image(56 * 40, 50, 4), "read it"), "vision"),
    "speech": (conv((synth_audio(1.3), 16000), "Transcribe the audio clip into text."), "speech"),
    "image_speech": (conv(drawn_image(70, 100, 5), (synth_audio(0.9, seed=1), 16000), "answer the spoken question"),
                     "vision"),
}


@pytest.fixture(scope="module")
def loaded(reference_ckpt):
    d, peft_model, cfg = reference_ckpt
    model = MoLoRAModel.from_pretrained(str(d)).eval()
    return model, MoLoRAProcessor.from_config(cfg), peft_model


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(loaded, case):
    model, proc, ref = loaded
    messages, adapter = CASES[case]
    batch = proc(messages)
    expected_type = {"text": "text", "speech": "speech", "image_speech": "image+speech"}.get(case, "image")
    assert model.row_types(batch["input_ids"]) == [expected_type]
    assert model.router.adapter(expected_type) == adapter  # the reference table
    expected = reference_logits(ref, batch, adapter)
    got = _logits(model, batch)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("layout", ["phi4mm", "molora", "phi4_multimodal"])
def test_layout_round_trip(loaded, tmp_path, layout):
    model, proc, ref = loaded
    model.save_pretrained(tmp_path / layout, layout=layout)
    again = MoLoRAModel.from_pretrained(str(tmp_path / layout)).eval()
    for case in ("text", "images_aspect", "image_speech", "speech"):
        messages, adapter = CASES[case]
        batch = proc(messages)
        assert (_logits(again, batch) - reference_logits(ref, batch, adapter)).abs().max().item() <= TOL


def test_converted_checkpoint_loads_in_transformers(loaded, tmp_path):
    """molora -> transformers-native layout -> transformers + peft: the same logits."""
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    model, proc, _ = loaded
    out = tmp_path / "native"
    model.save_pretrained(out, layout="phi4_multimodal")
    base = Phi4MultimodalForCausalLM.from_pretrained(str(out)).eval()
    eager_vision(base)
    peft_model = PeftModel.from_pretrained(base, str(out / "speech-lora"), adapter_name="speech")
    peft_model.load_adapter(str(out / "vision-lora"), adapter_name="vision")
    peft_model.eval()
    lora_modules = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and "vision" in m.lora_A]
    assert len(lora_modules) == 4 * model.config.backbone.num_hidden_layers  # decoder linears only
    assert all(".layers." in n and "embed_tokens_extend" not in n for n in lora_modules)
    for case in ("text", "speech", "one_image"):
        messages, adapter = CASES[case]
        batch = proc(messages)
        assert (_logits(model, batch) - reference_logits(peft_model, batch, adapter)).abs().max().item() <= TOL


def test_media_from_transformers_processors_feed_both_models(loaded):
    """A batch whose media tensors come from transformers' own image processor and feature
    extractor feeds MoLoRAModel and gives the reference's logits."""
    from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalImageProcessor

    model, proc, ref = loaded
    img, clip = drawn_image(130, 70, 8), synth_audio(1.1, seed=6)
    ours = proc(conv(img, (clip, 16000), "both"))
    crop = model.config.vision.image_size
    hf_img = Phi4MultimodalImageProcessor(size={"height": crop, "width": crop})([img], return_tensors="pt")
    hf_aud = Phi4MultimodalFeatureExtractor()([clip], sampling_rate=16000, return_tensors="pt")
    batch = {"input_ids": ours["input_ids"], "attention_mask": ours["attention_mask"],
             **{k: hf_img[k] for k in ("image_pixel_values", "image_sizes", "image_attention_mask")},
             **{k: hf_aud[k] for k in hf_aud if k.startswith("audio_")}}
    # (transformers' num_img_tokens hard-codes the 448-px global view, 256 + 16, so at this tiny
    # crop size the placeholder count comes from molora's processor, which matches the features)
    expected = reference_logits(ref, batch, "vision")
    assert (_logits(model, batch) - expected).abs().max().item() <= TOL
