"""Media as people hold them: numpy arrays and torch tensors (HWC / CHW, uint8 and float), batches,
``datasets`` audio dicts, paths; URLs refused. Each form gives exactly the processor output of the PIL /
``(array, rate)`` form, and arrays give what transformers' Phi4MultimodalImageProcessor gives them."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from transformers.models.phi4_multimodal.image_processing_phi4_multimodal import Phi4MultimodalImageProcessor

from conftest import drawn_image, synth_audio
from molora import MoLoRAConfig, MoLoRAProcessor
from molora.config import VisionConfig
from molora.encoders.image_transform import ImageTransform
from molora.errors import AudioError, ImageError

KEYS = ("input_ids", "attention_mask", "image_pixel_values", "image_sizes", "image_attention_mask",
        "audio_input_features", "audio_embed_sizes", "audio_attention_mask")


@pytest.fixture(scope="module")
def proc():
    return MoLoRAProcessor.from_config(MoLoRAConfig.preset("tiny"))


def assert_same_batch(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in KEYS:
        if k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def ask(proc, image=None, audio=None):
    content = ([{"type": "image", "image": image}] if image is not None else []) + \
        ([{"type": "audio", "audio": audio}] if audio is not None else []) + [{"type": "text", "text": "what?"}]
    return proc([{"role": "user", "content": content}])


def _image_forms(pil: Image.Image):
    hwc = np.asarray(pil)                               # what np.asarray(PIL image) gives: [H, W, 3] uint8
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    return {
        "numpy HWC uint8": hwc, "numpy CHW uint8": chw,
        "numpy HWC float64 /255": hwc / 255.0, "numpy CHW float32 /255": (chw / 255.0).astype(np.float32),
        "torch CHW uint8": torch.from_numpy(chw), "torch HWC uint8": torch.from_numpy(hwc.copy()),
        "torch CHW float /255": torch.from_numpy(chw).float() / 255,
        "numpy HWC int64": hwc.astype(np.int64),
    }


@pytest.mark.parametrize("form", list(_image_forms(drawn_image(8, 8))))
def test_image_arrays_and_tensors_equal_the_pil_form(proc, form):
    pil = drawn_image(90, 57, seed=3)
    assert_same_batch(ask(proc, image=_image_forms(pil)[form]), ask(proc, image=pil))


def test_grey_and_rgba_arrays_equal_their_pil_modes(proc):
    pil = drawn_image(40, 30, seed=4)
    grey = pil.convert("L")
    assert_same_batch(ask(proc, image=np.asarray(grey)), ask(proc, image=grey))                  # [H, W]
    assert_same_batch(ask(proc, image=np.asarray(grey)[None]), ask(proc, image=grey))            # [1, H, W]
    rgba = pil.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    assert_same_batch(ask(proc, image=np.asarray(rgba)), ask(proc, image=rgba))                  # composited on white


def test_arrays_equal_transformers_on_the_same_arrays():
    """transformers' Phi4MultimodalImageProcessor takes numpy / torch images too (channels inferred,
    uint8 values 0..255): same pixels, sizes and masks from molora's transform."""
    ref = Phi4MultimodalImageProcessor(size={"height": 56, "width": 56}, dynamic_hd=4)
    ours = ImageTransform(VisionConfig(image_size=56, dynamic_hd=4))
    hwc = np.asarray(drawn_image(150, 70, seed=5))
    for arr in (hwc, np.ascontiguousarray(hwc.transpose(2, 0, 1)), torch.from_numpy(hwc.transpose(2, 0, 1).copy())):
        r, o = ref([arr], return_tensors="pt"), ours([arr])
        for k in ("image_pixel_values", "image_sizes", "image_attention_mask"):
            assert torch.equal(r[k], o[k]), k


def test_a_4d_array_is_a_batch_of_images(proc):
    pils = [drawn_image(50, 40, seed=s) for s in range(3)]
    stack = np.stack([np.asarray(p) for p in pils])                    # [N, H, W, 3]
    text = "<|user|><|image_1|><|image_2|><|image_3|>what?<|end|><|assistant|>"
    assert_same_batch(proc(text=text, images=stack), proc(text=text, images=pils))
    assert_same_batch(proc(text=text, images=torch.from_numpy(stack).permute(0, 3, 1, 2)), proc(text=text, images=pils))


@pytest.mark.parametrize("bad, words", [
    (np.full((8, 8, 3), 2.0), ("[0, 1]", "0..2")),
    (np.full((8, 8, 3), np.nan), ("NaN",)),
    (np.zeros((8, 8, 3), bool), ("dtype bool",)),
    (np.zeros((8, 8, 5), np.uint8), ("channel axis", "(8, 8, 5)")),
    (np.zeros((2, 8, 8, 3, 1), np.uint8), ("shape",)),
    (np.full((8, 8), 300, np.int32), ("0..255",)),
])
def test_unusable_arrays_are_image_errors_naming_the_part(proc, bad, words):
    with pytest.raises(ImageError) as e:
        ask(proc, image=bad)
    assert e.value.item == "image[0]" and all(w in e.value.reason for w in words), e.value


# ----------------------------------------------------------------------------------------
# audio
# ----------------------------------------------------------------------------------------
def test_audio_forms_equal_the_tuple_form(proc, tmp_path):
    wav = synth_audio(1.3, seed=2)
    ref = ask(proc, audio=(wav, 16000))
    sf.write(tmp_path / "a.wav", wav, 16000, subtype="FLOAT")
    buf = io.BytesIO()
    sf.write(buf, wav, 16000, subtype="FLOAT", format="WAV")
    forms = {
        "datasets dict": {"array": wav, "sampling_rate": 16000, "path": "a.wav"},
        "dict of float64": {"array": wav.astype(np.float64), "sampling_rate": 16000},
        "bare array (processor rate)": wav,
        "torch tensor": torch.from_numpy(wav),
        "path": str(tmp_path / "a.wav"),
        "undecoded dict, path": {"path": str(tmp_path / "a.wav"), "bytes": None},
        "undecoded dict, bytes": {"path": None, "bytes": buf.getvalue()},
    }
    for name, form in forms.items():
        assert_same_batch(ask(proc, audio=form), ref), name
    # the dict carries its own rate, as a tuple does
    wav8 = synth_audio(1.0, sr=8000, seed=3)
    assert_same_batch(ask(proc, audio={"array": wav8, "sampling_rate": 8000}), ask(proc, audio=(wav8, 8000)))


def test_a_2d_audio_array_is_a_batch_of_clips_in_the_text_interface(proc):
    clips = np.stack([synth_audio(0.8, seed=s) for s in range(3)])          # [3, T]: three clips, as transformers
    text = "<|user|><|audio_1|>one<|end|>", "<|user|><|audio_1|><|audio_2|>two<|end|>"
    a = proc(text=list(text), audios=clips)
    b = proc(text=list(text), audios=[(c, 16000) for c in clips])
    assert_same_batch(a, b)
    assert a["audio_input_features"].shape[0] == 3


def test_urls_are_refused_with_an_offline_error(proc):
    with pytest.raises(ImageError, match="URL.*offline") as e:
        ask(proc, image="https://example.com/page.png")
    assert e.value.item == "https://example.com/page.png"
    with pytest.raises(ImageError, match="URL"):
        proc([{"role": "user", "content": [{"type": "image", "url": "http://x/y.jpg"}, {"type": "text", "text": "?"}]}])
    with pytest.raises(AudioError, match="URL.*offline"):
        ask(proc, audio="https://example.com/a.wav")
    with pytest.raises(AudioError, match="URL"):
        ask(proc, audio={"path": "s3://bucket/a.wav"})


def test_bad_audio_dicts_are_audio_errors(proc):
    with pytest.raises(AudioError, match="'array' and 'sampling_rate'"):
        ask(proc, audio={"sampling_rate": 16000})
    with pytest.raises(AudioError, match="cannot decode the audio bytes"):
        ask(proc, audio={"bytes": b"not audio at all"})
    with pytest.raises(AudioError, match="non-finite"):
        ask(proc, audio={"array": np.full(16000, np.nan, np.float32), "sampling_rate": 16000})
