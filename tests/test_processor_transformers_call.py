"""MoLoRAProcessor takes transformers' processor call -- ``text=`` with ``<|image|>`` / ``<|audio|>``
placeholders (one per item, in order), ``images=``, ``audio=``, ``dynamic_hd=``, ``sampling_rate=``,
``padding_side=`` -- and returns what transformers' own ``Phi4MultimodalProcessor`` returns for the
same call: a ``BatchFeature`` with the same keys and values. The reference is built from its own
classes (image processor, feature extractor) around one tokenizer that both processors share."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import (BatchFeature, Phi4MultimodalFeatureExtractor, Phi4MultimodalImageProcessor,
                          Phi4MultimodalProcessor, PreTrainedTokenizerFast)

from conftest import drawn_image, synth_audio
from molora import MoLoRAConfig, MoLoRAModel, MoLoRAProcessor
from molora.errors import ArgumentError, PlaceholderError

# transformers' image processor counts image tokens for its own crop layout (448 px crops of 14 px
# patches: "256 + 16" global tokens) and its feature extractor uses transformers' mel bank, so the
# comparison runs on the tiny preset with that crop layout and that bank (media processing only: no
# model is built at this size).
CONFIG = MoLoRAConfig.preset("tiny").replace(vision={"image_size": 448, "patch_size": 14},
                                              audio={"mel_filter": "transformers"})
EXACT = ("input_ids", "attention_mask", "image_sizes", "image_attention_mask", "audio_embed_sizes",
         "audio_attention_mask")


def tokenizer(image_token: str, audio_token: str) -> PreTrainedTokenizerFast:
    """molora's tiny tokenizer with the placeholder ids (261 / 262) named ``image_token`` /
    ``audio_token`` and declared as such, as transformers' Phi4Multimodal tokenizer declares them."""
    base = MoLoRAProcessor.from_config(CONFIG).tokenizer
    spec = base.backend_tokenizer.to_str().replace("<|endoftext10|>", image_token) \
        .replace("<|endoftext11|>", audio_token)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec), bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  extra_special_tokens={"image_token": image_token, "audio_token": audio_token})
    assert (tok.image_token_id, tok.audio_token_id) == (CONFIG.backbone.image_token_id, CONFIG.backbone.audio_token_id)
    return tok


def processors(image_token: str = "<|image|>", audio_token: str = "<|audio|>"):
    tok = tokenizer(image_token, audio_token)
    reference = Phi4MultimodalProcessor(Phi4MultimodalImageProcessor(dynamic_hd=CONFIG.vision.dynamic_hd),
                                        Phi4MultimodalFeatureExtractor(), tok)
    return MoLoRAProcessor(CONFIG, tok), reference


@pytest.fixture(scope="module")
def pair():
    return processors()


def assert_same_batch(ours, theirs) -> None:
    """Same keys; ids, sizes and masks equal; pixels and log-mel within float32 accuracy."""
    assert isinstance(ours, BatchFeature)
    assert set(ours) == set(theirs)
    for key in EXACT:
        if key in theirs:
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    if "image_pixel_values" in theirs:  # the same float32 ops on the same uint8 pixels
        torch.testing.assert_close(ours["image_pixel_values"], theirs["image_pixel_values"], rtol=1e-5, atol=1e-6)
    if "audio_input_features" in theirs:
        a, b = ours["audio_input_features"], theirs["audio_input_features"]
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        valid = theirs.get("audio_attention_mask", torch.ones(a.shape[:2], dtype=torch.bool))
        # natural-log mel power: an absolute error in the log is the relative error of the power, here
        # of molora's float32 rfft against transformers' float64 one (~1e-5; 1e-4 where little energy)
        torch.testing.assert_close(a[valid], b[valid], rtol=1e-5, atol=1e-4)
        # past a clip's end molora holds exactly padding (transformers keeps up to two partial frames;
        # the encoder masks them either way)
        assert (a[~valid] == 0).all()


IMAGE, WIDE = drawn_image(500, 300, 1), drawn_image(1000, 1000, 2)
CLIPS = [synth_audio(1.3, seed=1), synth_audio(0.7, seed=2)]
CALLS = {
    "image": dict(text="<|user|><|image|>What is shown?<|end|><|assistant|>", images=IMAGE),
    "audio": dict(text="<|user|><|audio|>Transcribe the audio clip into text.<|end|><|assistant|>",
                  audio=[CLIPS[0]], sampling_rate=16000),
    "batch, mixed": dict(text=["<|user|><|image|><|audio|>both<|end|><|assistant|>",
                               "<|user|><|audio|>only audio, and a longer question<|end|><|assistant|>"],
                         images=[IMAGE], audio=CLIPS, sampling_rate=16000, padding=True, padding_side="left"),
    "images per prompt, right padded": dict(
        text=["<|user|><|image|>one<|end|>", "<|user|><|image|><|image|>two<|end|>"],
        images=[[IMAGE], [WIDE, IMAGE]], padding=True, padding_side="right"),
    "dynamic_hd": dict(text="<|user|><|image|>read it<|end|><|assistant|>", images=WIDE, dynamic_hd=4),
    "one clip as a 1-D array": dict(text="<|audio|>", audio=CLIPS[1], sampling_rate=16000),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_transformers_call_gives_transformers_batch(pair, call):
    ours, theirs = pair
    kwargs = CALLS[call]
    assert_same_batch(ours(**kwargs, return_tensors="pt"), theirs(**kwargs, return_tensors="pt"))


def test_dynamic_hd_sets_the_crops_of_this_call(pair):
    ours, _ = pair
    text = "<|user|><|image|>read it<|end|><|assistant|>"
    assert ours(text=text, images=WIDE)["image_pixel_values"].shape[1] == 1 + 9    # 1000 px: 3 x 3 crops of 448
    assert ours(text=text, images=WIDE, dynamic_hd=4)["image_pixel_values"].shape[1] == 1 + 4
    assert ours.image_processor(WIDE, dynamic_hd=2)["image_pixel_values"].shape[1] == 1 + 1  # square: 1 x 1
    for bad in (0, -1, 2.5, "4", True):
        with pytest.raises(ArgumentError, match=r"^dynamic_hd: must be a positive integer"):
            ours(text=text, images=WIDE, dynamic_hd=bad)


def test_molora_placeholders_give_the_same_batch(pair):
    ours, _ = pair
    kwargs = CALLS["batch, mixed"]
    numbered = ["<|user|><|image_1|><|audio_1|>both<|end|><|assistant|>",
                "<|user|><|audio_1|>only audio, and a longer question<|end|><|assistant|>"]
    a, b = ours(**kwargs), ours(**{**kwargs, "text": numbered})
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_tokenizers_own_placeholder_tokens_are_placeholders():
    """A tokenizer that declares ``image_token = "<|endoftext10|>"`` (the official token names):
    transformers' processor expands that token; so does molora's."""
    ours, theirs = processors("<|endoftext10|>", "<|endoftext11|>")
    kwargs = dict(text="<|user|><|endoftext10|><|endoftext11|>both<|end|><|assistant|>", images=[IMAGE],
                  audio=[CLIPS[0]], sampling_rate=16000)
    assert_same_batch(ours(**kwargs), theirs(**kwargs, return_tensors="pt"))
    assert (ours.image_token, ours.audio_token) == ("<|endoftext10|>", "<|endoftext11|>")


def test_audios_keyword_still_works_and_equals_audio(pair):
    ours, _ = pair
    text = "<|user|><|audio_1|>hi<|end|>"
    a, b = ours(text=text, audios=[CLIPS[0]]), ours(text=text, audio=[CLIPS[0]])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ArgumentError, match=r"^audio: give audio= or audios="):
        ours(text=text, audio=[CLIPS[0]], audios=[CLIPS[0]])


def test_placeholder_and_media_counts_must_agree(pair):
    ours, _ = pair
    too_few = "more <|image|> / <|image_N|> placeholders than images given (1)"
    with pytest.raises(PlaceholderError, match=re.escape(too_few)):
        ours(text="<|image|><|image|>", images=[IMAGE])
    with pytest.raises(PlaceholderError, match=r"audio\(s\) have no placeholder"):
        ours(text="<|audio|>", audio=CLIPS)


@pytest.mark.parametrize("kwargs, words", [
    (dict(text=5), r"^text: must be a string or a list of strings, got int"),
    (dict(text=["a", None]), r"^text: must be a string or a list of strings"),
    (dict(text="a", padding="max_length"), r"^padding: must be True / 'longest'"),
    (dict(text=["a", "a longer one"], padding=False), r"^padding: rows have \[1, \d+\] tokens"),
])
def test_bad_call_arguments_are_one_line_errors(pair, kwargs, words):
    ours, _ = pair
    with pytest.raises(ArgumentError, match=words):
        ours(**kwargs)


def test_media_of_a_modality_the_model_lacks_are_refused():
    """An image-only config: audio given to it is refused, not dropped."""
    d = CONFIG.to_dict()
    d["modalities"] = {"image": {}}
    d["router"] = {k: v for k, v in d["router"].items() if k in ("text", "image")}
    proc = MoLoRAProcessor.from_config(MoLoRAConfig.from_dict(d))
    with pytest.raises(ArgumentError, match=r"^audio: this model takes no audio \(its modalities: image\)"):
        proc(text="<|user|>hi<|end|>", audios=[CLIPS[0]])
    assert proc(text="<|user|>hi<|end|>", videos=None)["input_ids"].shape[0] == 1  # transformers' call has videos=
    with pytest.raises(ArgumentError, match=r"^video: this model takes no video"):
        proc(text="<|user|>hi<|end|>", videos=[np.zeros((2, 8, 8, 3), np.uint8)])


def test_model_input_names_equal_transformers(pair):
    ours, theirs = pair
    assert ours.model_input_names == theirs.model_input_names
    assert ours.image_processor.model_input_names == Phi4MultimodalImageProcessor.model_input_names
    assert ours.audio_processor.model_input_names == Phi4MultimodalFeatureExtractor.model_input_names


def test_batch_feature_moves_and_feeds_the_model():
    """The batch is a BatchFeature: attribute access, ``.to()`` (floats cast, ids kept), ``model(**batch)``."""
    proc = MoLoRAProcessor.from_config(MoLoRAConfig.preset("tiny"))
    batch = proc([{"role": "user", "content": [{"type": "image", "image": IMAGE},
                                               {"type": "audio", "audio": (CLIPS[0], 16000)},
                                               {"type": "text", "text": "what?"}]}])
    assert isinstance(batch, BatchFeature) and batch.input_ids is batch["input_ids"]
    assert batch.to("cpu") is batch
    assert batch.to(torch.float64)["image_pixel_values"].dtype == torch.float64
    assert batch["input_ids"].dtype == torch.long
    model = MoLoRAModel(MoLoRAConfig.preset("tiny")).eval()
    with torch.no_grad():
        out = model(**batch.to(torch.float32))
    assert out.logits.shape[:2] == batch["input_ids"].shape


# ----------------------------------------------------------------------------------------
# the audio part's pad(): transformers' SequenceFeatureExtractor.pad on the same features
# ----------------------------------------------------------------------------------------
PAD_CASES = {
    "list of dicts": dict(),
    "to a multiple of 16": dict(pad_to_multiple_of=16),
    "max_length, truncated": dict(padding="max_length", max_length=40, truncation=True),
    "no attention mask": dict(return_attention_mask=False),
    "numpy": dict(return_tensors="np"),
}


@pytest.mark.parametrize("case", list(PAD_CASES))
def test_audio_pad_equals_transformers(pair, case):
    ours, _ = pair
    part = ours.audio_processor
    feats = [part(c, sampling_rate=16000) for c in (synth_audio(0.4, seed=3), CLIPS[0], CLIPS[1])]
    samples = [{"audio_input_features": f["audio_input_features"][0],
                "audio_embed_sizes": int(f["audio_embed_sizes"][0])} for f in feats]
    got = part.pad([dict(s) for s in samples], **PAD_CASES[case])
    want = Phi4MultimodalFeatureExtractor().pad([dict(s) for s in samples], **PAD_CASES[case])
    assert isinstance(got, BatchFeature) and set(got) == set(want)
    for k in want:
        assert type(got[k]) is type(want[k]) and np.array_equal(np.asarray(got[k]), np.asarray(want[k])), k
    as_dict = part.pad({"audio_input_features": [s["audio_input_features"] for s in samples]}, **PAD_CASES[case])
    assert np.array_equal(np.asarray(as_dict["audio_input_features"]), np.asarray(want["audio_input_features"]))
