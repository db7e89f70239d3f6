"""A checkpoint repository's own processor files are read: the official ``preprocessor_config.json``
(crops per image, audio settings), transformers' ``processor_config.json``, the tokenizer files and
the chat template; what a save writes is listed file by file."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import drawn_image, tiny_config, user_content
from molora import MoLoRAModel, MoLoRAProcessor
from molora.errors import CheckpointError, MoLoRAError

# the template of Phi-4-multimodal-instruct's tokenizer_config.json (the Phi-4 chat format)
OFFICIAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] "
    "is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + "
    "'<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}")
OFFICIAL_PREPROCESSOR = {  # the official repository's file, with dynamic_hd changed from 36
    "auto_map": {"AutoFeatureExtractor": "processing_phi4mm.Phi4MMAudioFeatureExtractor",
                 "AutoImageProcessor": "processing_phi4mm.Phi4MMImageProcessor",
                 "AutoProcessor": "processing_phi4mm.Phi4MMProcessor"},
    "feature_extractor_type": "Phi4MMAudioFeatureExtractor", "image_processor_type": "Phi4MMImageProcessor",
    "processor_class": "Phi4MMProcessor", "audio_compression_rate": 8, "audio_downsample_rate": 1,
    "audio_feat_stride": 1, "dynamic_hd": 2,
}
MESSAGES = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": user_content(drawn_image(300, 90, 2), "what is written?")}]


@pytest.fixture(scope="module")
def official_repo(tmp_path_factory):
    """A tiny model in the official layout with the repository's processor files beside it."""
    d = tmp_path_factory.mktemp("official") / "repo"
    torch.manual_seed(0)
    model = MoLoRAModel(tiny_config())
    model.save_pretrained(d, layout="phi4mm")
    MoLoRAProcessor.from_config(tiny_config()).tokenizer.save_pretrained(str(d))
    (d / "preprocessor_config.json").write_text(json.dumps(OFFICIAL_PREPROCESSOR))
    (d / "chat_template.json").write_text(json.dumps({"chat_template": OFFICIAL_TEMPLATE}))
    return d


def test_official_preprocessor_config_and_chat_template_are_read(official_repo):
    proc = MoLoRAProcessor.from_pretrained(str(official_repo))
    assert proc.config.vision.dynamic_hd == 2 and proc.image_processor.max_crops == 2
    assert proc.chat_template == OFFICIAL_TEMPLATE
    batch = proc(MESSAGES)
    assert batch["image_pixel_values"].shape[1] == 1 + 2  # global view + at most dynamic_hd crops
    # the official template is the Phi-4 format: the same ids as the built-in rendering
    builtin = MoLoRAProcessor(proc.config, proc.tokenizer)
    assert torch.equal(batch["input_ids"], builtin(MESSAGES)["input_ids"])
    assert proc(MESSAGES, return_labels=True)["labels"].ne(-100).sum() == 0  # no assistant turn yet
    text = proc.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False)
    assert text == "<|user|>hi<|end|><|endoftext|>"  # the template's own ending (eos)


def test_a_different_chat_template_is_used_for_prompts_and_refused_for_labels(official_repo):
    template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
    proc = MoLoRAProcessor.from_pretrained(str(official_repo), chat_template=template)
    assert proc.apply_chat_template(MESSAGES[:1]) == "<|system|>\nbe brief<|end|>\n<|assistant|>\n"
    ids = proc(MESSAGES)["input_ids"][0].tolist()
    newline = proc.tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert ids[-1 - len(newline):] == [proc.tokenizer.convert_tokens_to_ids("<|assistant|>")] + newline
    with pytest.raises(MoLoRAError, match=r"conversation\[0\].*renders this conversation differently"):
        proc(MESSAGES + [{"role": "assistant", "content": "ok"}], return_labels=True)


def test_transformers_processor_files_are_read(tmp_path):
    """processor_config.json as transformers' Phi4MultimodalProcessor writes it: molora's crops equal
    transformers' for the same file."""
    from transformers import (Phi4MultimodalFeatureExtractor, Phi4MultimodalImageProcessor,
                              Phi4MultimodalProcessor, PreTrainedTokenizerFast)

    d = tmp_path / "native"
    MoLoRAModel(tiny_config()).save_pretrained(d, layout="phi4_multimodal")
    MoLoRAProcessor.from_config(tiny_config()).tokenizer.save_pretrained(str(tmp_path / "tok"))
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"), extra_special_tokens={
        "image_token": "<|endoftext10|>", "audio_token": "<|endoftext11|>"})
    crop = tiny_config().vision.image_size
    Phi4MultimodalProcessor(Phi4MultimodalImageProcessor(size={"height": crop, "width": crop}, dynamic_hd=3),
                            Phi4MultimodalFeatureExtractor(), tok).save_pretrained(str(d))
    assert (d / "processor_config.json").exists()
    ours = MoLoRAProcessor.from_pretrained(str(d))
    assert ours.config.vision.dynamic_hd == 3
    images = [drawn_image(400, 100, 1), drawn_image(90, 300, 2)]
    theirs = Phi4MultimodalImageProcessor.from_pretrained(str(d))(images, return_tensors="pt")
    mine = ours.image_processor(images)
    assert mine["image_pixel_values"].shape == theirs["image_pixel_values"].shape
    assert torch.allclose(mine["image_pixel_values"], theirs["image_pixel_values"], atol=1e-5)
    assert torch.equal(mine["image_attention_mask"].bool(), theirs["image_attention_mask"].bool())


@pytest.mark.parametrize("field, value", [("audio_compression_rate", 4), ("patch_size", 16), ("dynamic_hd", 0),
                                          ("size", {"height": 448, "width": 448})])
def test_settings_the_model_cannot_follow_name_the_file_and_field(official_repo, tmp_path, field, value):
    import shutil

    d = tmp_path / "repo"
    shutil.copytree(official_repo, d)
    (d / "preprocessor_config.json").write_text(json.dumps({**OFFICIAL_PREPROCESSOR, field: value}))
    with pytest.raises(CheckpointError, match=rf"preprocessor_config\.json: .*{'crop_size' if field == 'size' else field}"):
        MoLoRAProcessor.from_pretrained(str(d))


def test_save_lists_the_files_it_wrote(official_repo, tmp_path):
    proc = MoLoRAProcessor.from_pretrained(str(official_repo))
    files = proc.save_pretrained(tmp_path / "out")
    assert files == sorted(p.name for p in (tmp_path / "out").iterdir())
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "molora_processor.json"} <= set(files)
    again = MoLoRAProcessor.from_pretrained(str(tmp_path / "out"))
    assert again.chat_template == OFFICIAL_TEMPLATE and again.config.vision.dynamic_hd == 2
    media_only = MoLoRAProcessor(proc.config)
    assert media_only.save_pretrained(tmp_path / "media") == ["molora_processor.json"]
