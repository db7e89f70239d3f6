"""Every configuration transformers' Phi4Multimodal builds loads in molora with its weights, and gives
transformers' logits on its eager path: the configuration of transformers' own model tester
(tests/models/phi4_multimodal/test_modeling_phi4_multimodal.py, ``Phi4MultimodalModelTester``:
2 layers, vocabulary 49, 16-px crops on a 448-px position grid, a conformer whose channel counts
differ from its width) and a variant of it that runs images and audio too."""
from __future__ import annotations

import pytest
import torch

from conftest import drawn_image, randomize_, synth_audio
from molora import MoLoRAModel, MoLoRAProcessor
from molora.errors import ConfigError

# Phi4MultimodalModelTester's values (transformers' tests), written down as data: the decoder ...
TESTER = {"num_hidden_layers": 2, "vocab_size": 49, "hidden_size": 32, "intermediate_size": 64,
          "num_attention_heads": 8, "num_key_value_heads": 4, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
# ... its audio_config (the rest: Phi4MultimodalAudioConfig's defaults, e.g. ext_pw_out_channel 1024) ...
TESTER_AUDIO = {"num_blocks": 2, "hidden_size": 32, "num_attention_heads": 8, "intermediate_size": 48,
                "depthwise_separable_out_channel": 128, "nemo_conv_channels": 128, "initializer_range": 1e-5}
# ... and its vision_config (image_size stays 448: the position grid; the crops are 16 px)
TESTER_VISION = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 8,
                 "crop_size": 16, "initializer_range": 1e-5}
# float64 weights and activations; transformers computes the rotary cos / sin in float32
TOL = 1e-6


def _transformers_model(tmp_path, audio: dict, vision: dict, dtype=torch.float64):
    """transformers' model from these values, every weight random and non-zero, saved by transformers."""
    from transformers import (Phi4MultimodalAudioConfig, Phi4MultimodalConfig, Phi4MultimodalForCausalLM,
                              Phi4MultimodalVisionConfig)

    cfg = Phi4MultimodalConfig(**TESTER, audio_config=Phi4MultimodalAudioConfig(**audio),
                               vision_config=Phi4MultimodalVisionConfig(**vision), attn_implementation="eager")
    torch.manual_seed(0)
    ref = Phi4MultimodalForCausalLM(cfg).to(dtype).eval()
    randomize_(ref, seed=1)
    ref.save_pretrained(tmp_path / "hf")
    return ref, tmp_path / "hf"


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_the_tester_configuration_loads_and_gives_transformers_logits(tmp_path):
    ref, folder = _transformers_model(tmp_path, TESTER_AUDIO, TESTER_VISION)
    ours = MoLoRAModel.from_pretrained(str(folder)).eval()
    assert ours.dtype == torch.float64
    v, a = ours.config.vision, ours.config.audio
    assert (v.image_size, v.crop, v.patch_size, v.num_hidden_layers) == (448, 16, 14, 2)
    assert (a.hidden_size, a.ext_pw_out_channel, a.depthwise_separable_out_channel, a.bias_max_distance) == (32, 1024, 128, 1000)
    # every tensor transformers saved is in molora's model, unchanged
    hf = ref.state_dict()
    from molora.checkpoint_layouts import to_transformers_state_dict

    back = to_transformers_state_dict(ours.state_dict())
    assert set(back) == set(hf) and all(torch.equal(back[k], hf[k]) for k in hf)
    # the tester's inputs are text for both models (its image / audio ids are not the config's token ids)
    ids = torch.randint(3, 49, (2, 17), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[-1, -2:] = 0  # a right-padded row (a padded first position gives NaN rows in transformers' float64 eager path)
    got, expected = _logits(ours, {"input_ids": ids, "attention_mask": mask}), _logits(ref, {"input_ids": ids,
                                                                                          "attention_mask": mask})
    assert (got - expected)[mask.bool()].abs().max().item() <= TOL
    # its conformer cannot run audio (in transformers neither): one line naming the fields, when audio is run
    with pytest.raises(ConfigError, match=r"ext_pw_out_channel 1024 and depthwise_separable_out_channel 128 must "
                                          r"equal hidden_size 32"):
        ours.audio_embed.encoder(torch.randn(1, 40, 80, dtype=torch.float64))


def test_a_runnable_variant_gives_transformers_logits_for_images_and_audio(tmp_path):
    """The tester's model with 28-px crops on the 448-px grid, a conformer that runs, and placeholder
    ids inside its vocabulary: image, audio and image + audio rows match transformers' eager path."""
    audio = {**TESTER_AUDIO, "ext_pw_out_channel": 32, "depthwise_separable_out_channel": 32, "audio_token_id": 2}
    vision = {**TESTER_VISION, "crop_size": 28, "image_token_id": 1}
    ref, folder = _transformers_model(tmp_path, audio, vision)
    ours = MoLoRAModel.from_pretrained(str(folder)).eval()
    assert (ours.config.vision.crop, ours.config.backbone.image_token_id, ours.config.backbone.audio_token_id) == (28, 1, 2)
    proc = MoLoRAProcessor.from_config(ours.config)
    img = proc.image_processor([drawn_image(70, 40, 1)])
    aud = proc.audio_processor([synth_audio(0.7, seed=2)], sampling_rate=16000)
    n_img, n_aud = img["num_img_tokens"][0], int(aud["audio_embed_sizes"][0])
    text = torch.randint(3, 49, (9,), generator=torch.Generator().manual_seed(1))
    image_media = {k: img[k] for k in ("image_pixel_values", "image_sizes", "image_attention_mask")}
    audio_media = {k: v for k, v in aud.items() if k.startswith("audio_")}
    rows = {"image": ([1] * n_img, image_media), "audio": ([2] * n_aud, audio_media),
            "image+audio": ([1] * n_img + [2] * n_aud, {**image_media, **audio_media})}
    for name, (placeholders, media) in rows.items():
        ids = torch.cat([text[:4], torch.tensor(placeholders), text[4:]])[None]
        batch = {"input_ids": ids, **media}
        got, expected = _logits(ours, batch), _logits(ref, batch)
        assert (got - expected).abs().max().item() <= TOL, name


def test_a_sliding_window_molora_does_not_apply_is_refused_in_one_line(tmp_path, capsys):
    """transformers' decoder attends within ``sliding_window`` tokens; molora attends to the whole context:
    loading refuses (naming config.json and the field) rather than give other logits past the window."""
    from molora.cli import main as cli

    ref, folder = _transformers_model(tmp_path, TESTER_AUDIO, TESTER_VISION, dtype=torch.float32)
    import json

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sliding_window": 8}))
    capsys.readouterr()  # transformers' own progress bars
    assert cli(["convert", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err and "sliding_window" in err
    assert "is 8, shorter than max_position_embeddings 131072" in err
    (folder / "config.json").write_text(json.dumps({**config, "sliding_window": 262144}))  # no effect: accepted
    assert MoLoRAModel.from_pretrained(str(folder)).config.backbone.num_hidden_layers == 2
