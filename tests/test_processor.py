"""MoLoRAProcessor: chat template, placeholder expansion, padding sides, assistant-only labels,
and clear errors when placeholders and media disagree."""
from __future__ import annotations

import pytest
import torch

from conftest import drawn_image, synth_audio
from molora import MoLoRAConfig, MoLoRAProcessor
from molora.errors import MoLoRAError, PlaceholderError


@pytest.fixture(scope="module")
def proc():
    return MoLoRAProcessor.from_config(MoLoRAConfig.preset("tiny"))


def test_chat_template_matches_phi4_format(proc):
    msgs = [{"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "audio", "audio": (synth_audio(0.5), 16000)},
                                         {"type": "text", "text": "Transcribe the audio clip into text."}]}]
    assert proc.apply_chat_template(msgs) == (
        "<|system|>sys<|end|><|user|><|audio_1|>Transcribe the audio clip into text.<|end|><|assistant|>")


def test_placeholders_expand_to_token_counts(proc):
    img, clip = drawn_image(90, 40), (synth_audio(1.0), 16000)
    b = proc([{"role": "user", "content": [{"type": "image", "image": img}, {"type": "audio", "audio": clip},
                                           {"type": "text", "text": "hi"}]}])
    ids = b["input_ids"][0]
    n_img = int(proc.image_processor([img])["num_img_tokens"][0])
    n_aud = int(b["audio_embed_sizes"][0])
    assert int((ids == proc.image_token_id).sum()) == n_img
    assert int((ids == proc.audio_token_id).sum()) == n_aud
    # placeholders are contiguous runs in order: image first, then audio
    pos_i = (ids == proc.image_token_id).nonzero().flatten()
    pos_a = (ids == proc.audio_token_id).nonzero().flatten()
    assert pos_i.max() < pos_a.min()
    assert (pos_i.diff() == 1).all() and (pos_a.diff() == 1).all()


def test_text_interface_equals_messages(proc):
    img = drawn_image(70, 70)
    a = proc([{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "what?"}]}])
    b = proc(text="<|user|><|image_1|>what?<|end|><|assistant|>", images=[img])
    for k in ("input_ids", "attention_mask", "image_pixel_values", "image_sizes", "image_attention_mask"):
        assert torch.equal(a[k], b[k]), k


def test_padding_and_labels(proc):
    convs = [[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}],
             [{"role": "user", "content": "a much longer question"}, {"role": "assistant", "content": "yes"}]]
    gen = proc(convs)
    assert gen["attention_mask"][0, 0] == 0 and gen["attention_mask"][0, -1] == 1  # left padded
    train = proc(convs, return_labels=True)
    assert train["attention_mask"][0, 0] == 1 and train["attention_mask"][0, -1] == 0  # right padded
    for i, answer in enumerate(["hi there", "yes"]):
        lab = train["labels"][i]
        kept = lab[lab != -100]
        assert proc.tokenizer.decode(kept) == answer + "<|end|>"
    # nothing but assistant content is labelled
    assert (train["labels"][train["attention_mask"] == 0] == -100).all()


@pytest.mark.parametrize("text,images,why", [
    ("<|user|><|image_1|><|image_2|>x<|end|>", 1, "more <|image|> / <|image_N|> placeholders than images"),
    ("<|user|>no placeholder<|end|>", 1, "have no placeholder"),
])
def test_placeholder_count_mismatch(proc, text, images, why):
    with pytest.raises(PlaceholderError) as e:
        proc(text=text, images=[drawn_image(30, 30)] * images)
    assert why in str(e.value)


def test_model_rejects_mismatched_media(proc):
    from molora import MoLoRAModel

    model = MoLoRAModel(MoLoRAConfig.preset("tiny")).eval()
    b = proc(text="<|user|><|image_1|>x<|end|>", images=[drawn_image(56, 56)])
    b["input_ids"][0, (b["input_ids"][0] == proc.image_token_id).nonzero()[0]] = 65  # drop one slot
    with pytest.raises(PlaceholderError) as e:
        model(**b)
    assert "image placeholder tokens" in str(e.value) and "image" in str(e.value)


def test_bad_message_errors_name_the_item(proc):
    with pytest.raises(MoLoRAError, match=r"conversation\[0\]\.messages\[0\]\.content\[0\]"):
        proc([{"role": "user", "content": [{"type": "video", "video": "x.mp4"}]}])
    with pytest.raises(MoLoRAError, match=r"role must be one of"):
        proc([{"role": "robot", "content": "x"}])


def test_media_errors_surface_through_the_processor(proc, tmp_path):
    from molora.errors import AudioError, ImageError

    bad_img = tmp_path / "broken.png"
    bad_img.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ImageError, match="broken.png"):
        proc([{"role": "user", "content": [{"type": "image", "image": str(bad_img)}]}])
    with pytest.raises(AudioError, match="missing.wav"):
        proc([{"role": "user", "content": [{"type": "audio", "audio": str(tmp_path / "missing.wav")}]}])
    import numpy as np

    with pytest.raises(AudioError, match="non-finite|NaN"):
        proc([{"role": "user", "content": [{"type": "audio", "audio": (np.full(1600, np.nan, np.float32), 16000)}]}])
