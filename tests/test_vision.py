"""SigLIP tower and image embedder against transformers' Phi-4-multimodal vision code (tiny random
weights), key renames, and the open_clip / timm import."""
from __future__ import annotations

import pytest
import torch
from transformers.models.phi4_multimodal.configuration_phi4_multimodal import (
    Phi4MultimodalConfig,
    Phi4MultimodalVisionConfig,
)
from transformers.models.phi4_multimodal.modeling_phi4_multimodal import (
    Phi4MultimodalImageEmbedding,
    Phi4MultimodalVisionModel,
)

from conftest import drawn_image, randomize_
from molora.config import MoLoRAConfig, VisionConfig
from molora.modalities.image_embed import ImageEmbedder, from_transformers_keys, to_transformers_keys
from molora.encoders.image_transform import ImageTransform
from molora.encoders.open_clip_import import load_open_clip_siglip, resize_position_grid
from molora.encoders.siglip import SiglipVisionTower
from molora.errors import CheckpointError

PREFIX = "model.embed_tokens_extend.image_embed."


def tiny(crop: int = 56, max_crops: int = 8, layers: int = 3) -> MoLoRAConfig:
    return MoLoRAConfig.preset("tiny").replace(vision={"image_size": crop, "dynamic_hd": max_crops,
                                                       "num_hidden_layers": layers})


def hf_vision_config(v: VisionConfig) -> Phi4MultimodalVisionConfig:
    return Phi4MultimodalVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads, image_size=v.image_size, crop_size=v.image_size,
        patch_size=v.patch_size, layer_norm_eps=v.layer_norm_eps, feature_layer=v.feature_layer)


def reference_embedding(cfg: MoLoRAConfig, seed: int = 0) -> Phi4MultimodalImageEmbedding:
    hf = Phi4MultimodalConfig(vision_config=hf_vision_config(cfg.vision).to_dict(), hidden_size=cfg.backbone.hidden_size,
                              num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                              intermediate_size=64, vocab_size=300, bos_token_id=0, pad_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    ref = Phi4MultimodalImageEmbedding(hf).eval()
    randomize_(ref, seed)  # separators included: non-zero
    return ref


def run_reference(ref: Phi4MultimodalImageEmbedding, batch: dict, n_tokens: int) -> torch.Tensor:
    ids = torch.full((1, n_tokens), ref.config.vision_config.image_token_id)
    embeds = torch.zeros(1, n_tokens, ref.img_projection_up.out_features)
    with torch.no_grad():
        return ref(ids, embeds, batch["image_pixel_values"], batch["image_sizes"], batch["image_attention_mask"])[0]


def padded_masks(n: int, m: int, seed: int = 0) -> torch.Tensor:
    """Top-left valid rectangles like those of padded crops (first one full)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, m, m, dtype=torch.bool)
    for i in range(n):
        r, c = (m, m) if i == 0 else torch.randint(1, m + 1, (2,), generator=g).tolist()
        mask[i, :r, :c] = True
    return mask


# -- tower --------------------------------------------------------------------------------
@pytest.mark.parametrize("crop", [56, 42])
def test_tower_equals_transformers(crop):
    v = tiny(crop).vision
    hf_cfg = hf_vision_config(v)
    ref = Phi4MultimodalVisionModel(hf_cfg).eval()
    randomize_(ref, 1)
    ours = SiglipVisionTower(v).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same key names
    assert ours.num_layers_used == v.num_hidden_layers - 1
    m = crop // 14
    pixels = torch.randn(6, 3, crop, crop, generator=torch.Generator().manual_seed(2))
    mask = padded_masks(6, m)
    with torch.no_grad():
        want = ref(pixels, patch_attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(ours(pixels, mask), want, rtol=0, atol=1e-5)
        # the unused SigLIP pooling head is wired like transformers' too
        torch.testing.assert_close(ours.pooled(pixels, mask), ref(pixels, patch_attention_mask=mask).pooler_output,
                                   rtol=0, atol=1e-5)
        # No padded patch at all: transformers' SDPA path drops the all-ones mask and then runs
        # *causal* attention (module.is_causal = True); SigLIP is bidirectional, as its eager path is.
        ref.config._attn_implementation = "eager"
        want_full = ref(pixels, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(ours(pixels), want_full, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(pixels, mask), ref(pixels, patch_attention_mask=mask,
                                                           output_hidden_states=True).hidden_states[-2],
                                   rtol=0, atol=1e-5)


def test_tower_runs_only_up_to_the_feature_layer():
    v = tiny().vision
    tower = SiglipVisionTower(v).eval()
    calls = []
    for i, layer in enumerate(tower.encoder.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    tower(torch.randn(1, 3, 56, 56))
    assert calls == list(range(v.num_hidden_layers - 1))


# -- embedder -----------------------------------------------------------------------------
SIZES = [(60, 60), (130, 50), (30, 200), (283, 121), (1000, 120)]  # last one: > max_crops


@pytest.mark.parametrize("crop,max_crops", [(56, 8), (42, 6)])  # 4x4 patches (even) and 3x3 (reflection pad)
def test_embedder_equals_transformers(crop, max_crops):
    cfg = tiny(crop, max_crops)
    ref = reference_embedding(cfg)
    ours = ImageEmbedder(cfg).eval()
    ours.load_state_dict(from_transformers_keys(ref.state_dict()), strict=True)
    assert bool(ours.sub_GN.detach().abs().min() > 0) and bool(ours.glb_GN.detach().abs().min() > 0)
    batch = ImageTransform(cfg.vision)([drawn_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)])
    assert batch["image_pixel_values"].shape[1] == max_crops + 1  # padding slots present
    with torch.no_grad():
        out = ours(batch["image_pixel_values"], batch["image_sizes"], batch["image_attention_mask"])
    assert [o.shape for o in out] == [(t, cfg.backbone.hidden_size) for t in batch["num_img_tokens"]]
    want = run_reference(ref, batch, sum(batch["num_img_tokens"]))
    torch.testing.assert_close(torch.cat(out), want, rtol=0, atol=1e-5)
    # an image that fills its crops exactly (no padded patch in the batch): compare with the
    # reference's eager attention, since its SDPA path turns causal without a mask
    exact = ImageTransform(cfg.vision)([drawn_image(2 * crop, crop)])
    assert bool(exact["image_attention_mask"].all())
    ref.img_processor.config._attn_implementation = "eager"
    with torch.no_grad():
        out = ours(exact["image_pixel_values"], exact["image_sizes"], exact["image_attention_mask"])
    torch.testing.assert_close(out[0], run_reference(ref, exact, exact["num_img_tokens"][0]), rtol=0, atol=1e-5)


def test_padding_slots_are_skipped_and_change_nothing():
    cfg = tiny(56, 8)
    ours = ImageEmbedder(cfg).eval()
    randomize_(ours, 3)
    imgs = [drawn_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES[:3])]
    transform = ImageTransform(cfg.vision)
    batch = transform(imgs)
    seen = []
    ours.img_processor.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        out = ours(batch["image_pixel_values"], batch["image_sizes"], batch["image_attention_mask"])
        # garbage in the unused slots is never read
        pix = batch["image_pixel_values"].clone()
        for i, n in enumerate((batch["image_sizes"] // 56).prod(1).tolist()):
            pix[i, 1 + n:] = torch.randn_like(pix[i, 1 + n:]) * 100
        garbage = ours(pix, batch["image_sizes"], batch["image_attention_mask"])
        alone = [ours(**{k: v for k, v in transform([im]).items() if k != "num_img_tokens"})[0] for im in imgs]
    crops = int(((batch["image_sizes"] // 56).prod(1) + 1).sum())
    assert seen[0] == crops < batch["image_pixel_values"].shape[:2].numel()
    for a, b, c in zip(out, garbage, alone):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-5)


# -- key names ----------------------------------------------------------------------------
def test_transformers_key_renames_round_trip():
    cfg = tiny()
    ours = ImageEmbedder(cfg)
    hf = Phi4MultimodalConfig(vision_config=hf_vision_config(cfg.vision).to_dict(), hidden_size=cfg.backbone.hidden_size,
                              num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                              vocab_size=300, bos_token_id=0, pad_token_id=0, eos_token_id=0)
    from transformers import Phi4MultimodalForCausalLM

    with torch.device("meta"):
        full = Phi4MultimodalForCausalLM(hf)
    real = {k: tuple(v.shape) for k, v in full.state_dict().items() if k.startswith(PREFIX)}
    ours_sd = {PREFIX + k: v for k, v in ours.state_dict().items()}
    converted = to_transformers_keys(ours_sd, prefix=PREFIX)
    assert {k: tuple(v.shape) for k, v in converted.items()} == real
    back = from_transformers_keys(converted, prefix=PREFIX)
    assert list(back) == list(ours_sd)
    assert to_transformers_keys({"model.layers.0.x": 1}, prefix=PREFIX) == {"model.layers.0.x": 1}


def test_official_checkpoint_names_and_shapes():
    cfg = MoLoRAConfig.preset("phi4-multimodal")
    with torch.device("meta"):
        emb = ImageEmbedder(cfg)
    sd = {k: tuple(v.shape) for k, v in emb.state_dict().items()}
    assert sd["glb_GN"] == (1, 1, 1152) and sd["sub_GN"] == (1, 1, 1, 1152)
    assert sd["img_projection.0.weight"] == (3072, 1152) and sd["img_projection.2.weight"] == (3072, 3072)
    assert sd["img_processor.embeddings.patch_embedding.weight"] == (1152, 3, 14, 14)
    assert sd["img_processor.embeddings.position_embedding.weight"] == (1024, 1152)
    assert sd["img_processor.encoder.layers.26.mlp.fc1.weight"] == (4304, 1152)
    for key in ("img_processor.head.probe", "img_processor.head.attention.in_proj_weight",
                "img_processor.head.attention.in_proj_bias", "img_processor.head.attention.out_proj.weight",
                "img_processor.head.layernorm.bias", "img_processor.head.mlp.fc2.weight",
                "img_processor.post_layernorm.weight", "img_processor.encoder.layers.0.self_attn.q_proj.bias"):
        assert key in sd
    assert not any("position_ids" in k for k in sd)


# -- open_clip / timm import --------------------------------------------------------------
def _timm_siglip(img: int = 56, depth: int = 3, seed: int = 0):
    from timm.models.vision_transformer import VisionTransformer

    v = tiny(img, layers=depth).vision
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img, patch_size=14, embed_dim=v.hidden_size, depth=depth,
                              num_heads=v.num_attention_heads, mlp_ratio=v.intermediate_size / v.hidden_size,
                              class_token=False, global_pool="map", num_classes=0, act_layer="gelu_tanh").eval()
    randomize_(model, seed)
    return model


@pytest.mark.parametrize("prefixed", [True, False])
def test_open_clip_import_matches_timm(tmp_path, prefixed):
    from safetensors.torch import save_file

    timm_model = _timm_siglip()
    sd = {k: v.contiguous() for k, v in timm_model.state_dict().items()}
    if prefixed:  # open_clip layout: the trunk under visual.trunk., text tower alongside
        sd = {f"visual.trunk.{k}": v for k, v in sd.items()} | {"text.token_embedding.weight": torch.zeros(4, 4)}
    path = tmp_path / "open_clip_model.safetensors"
    save_file(sd, str(path))
    v = tiny(56, layers=3).vision
    tower = SiglipVisionTower(v).eval()
    tower.load_state_dict(load_open_clip_siglip(path, v), strict=True)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want = timm_model.forward_intermediates(x, indices=[v.num_hidden_layers - 2], norm=False,
                                                output_fmt="NLC", intermediates_only=True)[0]
        torch.testing.assert_close(tower(x), want, rtol=0, atol=1e-5)
        # attention pooling head: timm's pooled output == our head on the final normed tokens
        torch.testing.assert_close(tower.pooled(x), timm_model(x), rtol=0, atol=1e-5)


def test_open_clip_import_resizes_position_grid(tmp_path):
    timm_model = _timm_siglip(img=56)  # 4x4 positions
    sd = timm_model.state_dict()
    v5 = tiny(70, layers=3).vision  # 5x5 positions
    converted = load_open_clip_siglip(sd, v5)
    pe = converted["embeddings.position_embedding.weight"]
    assert pe.shape == (25, v5.hidden_size)
    SiglipVisionTower(v5).load_state_dict(converted, strict=True)
    # unchanged grid: exact copy
    same = load_open_clip_siglip(sd, tiny(56, layers=3).vision)["embeddings.position_embedding.weight"]
    torch.testing.assert_close(same, sd["pos_embed"][0], rtol=0, atol=0)
    # a constant grid stays constant, a ramp stays a monotone ramp with the same ends' order
    const = resize_position_grid(torch.full((1, 16, 3), 0.7), 5)
    torch.testing.assert_close(const, torch.full((25, 3), 0.7), rtol=0, atol=1e-6)
    ramp = torch.arange(4.0).repeat(4)[None, :, None]  # value = column index
    cols = resize_position_grid(ramp, 5).view(5, 5)
    assert bool((cols[:, 1:] > cols[:, :-1]).all())
    torch.testing.assert_close(cols, cols[:1].expand(5, 5), rtol=0, atol=1e-6)
    assert -0.1 < float(cols[0, 0]) < 0.5 and 2.5 < float(cols[0, -1]) < 3.1


def test_open_clip_import_errors(tmp_path):
    v = tiny().vision
    with pytest.raises(CheckpointError, match="safetensors"):
        load_open_clip_siglip(tmp_path / "model.bin", v) if (tmp_path / "model.bin").write_bytes(b"x") else None
    with pytest.raises(CheckpointError, match="blocks"):
        load_open_clip_siglip(_timm_siglip(depth=2).state_dict(), v)


def test_open_clip_folder_reads_its_canonical_weights_file_only(tmp_path):
    """A folder is read through open_clip's own file name (then timm's), never whichever *.safetensors
    happens to be there: a backup beside it is not read, and a folder without either is named."""
    from safetensors.torch import save_file

    v = tiny().vision
    good = {k: t.contiguous() for k, t in _timm_siglip(depth=v.num_hidden_layers).state_dict().items()}
    save_file({f"visual.trunk.{k}": t for k, t in good.items()}, str(tmp_path / "open_clip_model.safetensors"))
    save_file({"junk": torch.zeros(1)}, str(tmp_path / "aaa_backup.safetensors"))
    sd = load_open_clip_siglip(tmp_path, v)
    assert torch.equal(sd["embeddings.patch_embedding.weight"], good["patch_embed.proj.weight"])
    (tmp_path / "open_clip_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no open_clip_model.safetensors or model.safetensors in the folder"):
        load_open_clip_siglip(tmp_path, v)
