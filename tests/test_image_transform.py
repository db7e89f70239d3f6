"""ImageTransform against transformers' Phi4MultimodalImageProcessor, and load_image's errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.phi4_multimodal.image_processing_phi4_multimodal import Phi4MultimodalImageProcessor

from conftest import drawn_image
from molora.config import VisionConfig
from molora.encoders.image_transform import ImageTransform, load_image
from molora.errors import ImageError


def _pair(crop: int, max_crops: int):
    ref = Phi4MultimodalImageProcessor(size={"height": crop, "width": crop}, dynamic_hd=max_crops)
    ours = ImageTransform(VisionConfig(image_size=crop, dynamic_hd=max_crops))
    return ref, ours


def _reference_tokens(ref_tokens: int, crop: int, patch: int = 14) -> int:
    # transformers hard-codes the global view as 16x16 + 16 tokens (right for 448 only)
    g = (crop // patch + 1) // 2
    return ref_tokens - 272 + g * g + g


def assert_same(ref_out, ours_out, crop: int) -> None:
    for key in ("image_pixel_values", "image_sizes", "image_attention_mask"):
        r, o = ref_out[key], ours_out[key]
        assert r.shape == o.shape and r.dtype == o.dtype, key
        assert torch.equal(r, o), f"{key}: max diff {(r.float() - o.float()).abs().max()}"
    assert ours_out["num_img_tokens"] == [_reference_tokens(int(t), crop) for t in ref_out["num_img_tokens"]]


# 5000x500 is 12 x 2 crops; 3000x3000 (7 x 7 = 49 > 36) takes the closest-aspect-ratio path
SIZES_448 = [(1, 1), (7, 300), (448, 448), (449, 448), (1000, 30), (30, 1000), (2000, 1500), (5000, 500), (3000, 3000)]


@pytest.mark.parametrize("size", SIZES_448, ids=[f"{w}x{h}" for w, h in SIZES_448])
def test_equals_transformers_at_448(size):
    ref, ours = _pair(448, 36)
    img = drawn_image(*size, seed=sum(size))
    assert_same(ref([img], return_tensors="pt"), ours([img]), 448)


def test_more_than_max_crops_uses_closest_aspect_ratio():
    ours = ImageTransform(VisionConfig())
    out = ours([drawn_image(5000, 1500)])  # 12 x 4 = 48 crops > 36: closest aspect ratio instead
    assert out["image_sizes"].tolist() == [[3 * 448, 10 * 448]]
    assert out["image_pixel_values"].shape == (1, 31, 3, 448, 448)
    assert ours.num_tokens(5000, 1500) == out["num_img_tokens"][0]
    assert ours.num_tokens(448, 448) == 545  # the published count for one 448x448 image


@pytest.mark.parametrize("crop,max_crops", [(56, 12), (42, 9)])
def test_equals_transformers_tiny_crops_batched(crop, max_crops):
    """A batch mixing grids (padding slots), extreme aspect ratios and > max_crops images."""
    ref, ours = _pair(crop, max_crops)
    sizes = [(1, 1), (57, 56), (1000, 30), (30, 1000), (200, 150), (1000, 90), (333, 333), (43, 42)]
    imgs = [drawn_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    assert_same(ref(imgs, return_tensors="pt"), ours(imgs), crop)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "P+transparency"])
def test_mode_conversion_equals_transformers(mode):
    ref, ours = _pair(56, 4)
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 255, (70, 90, 4), dtype=np.uint8), "RGBA")
    if mode == "P+transparency":
        img = rgba.convert("RGB").convert("P")
        img.info["transparency"] = 3
    else:
        img = rgba.convert(mode)
    assert_same(ref([img], return_tensors="pt"), ours([img]), 56)


def test_paths_and_single_image(tmp_path):
    ref, ours = _pair(56, 6)
    img = drawn_image(120, 80)
    path = tmp_path / "a.png"
    img.save(path)
    assert_same(ref([img], return_tensors="pt"), ours(str(path)), 56)
    assert_same(ref([img], return_tensors="pt"), ours(img), 56)


def test_too_extreme_aspect_ratio_is_an_image_error():
    ref, ours = _pair(56, 12)
    with pytest.raises(ValueError):
        ref([drawn_image(7, 300)], return_tensors="pt")
    with pytest.raises(ImageError) as e:
        ours([drawn_image(100, 100), drawn_image(7, 300)])
    assert e.value.item == "image[1]" and "aspect ratio" in e.value.reason


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=st.integers(10, 3000), h=st.integers(10, 3000), crop=st.sampled_from([42, 56]), max_crops=st.integers(1, 16))
def test_tokens_and_masks_property(w, h, crop, max_crops):
    ours = ImageTransform(VisionConfig(image_size=crop, dynamic_hd=max_crops))
    img = Image.new("RGB", (w, h), (10, 200, 30))
    try:
        out = ours([img])
    except ImageError as e:
        with pytest.raises(ValueError):  # the reference refuses the same images
            Phi4MultimodalImageProcessor(size={"height": crop, "width": crop}, dynamic_hd=max_crops)([img])
        assert "aspect ratio" in e.reason
        return
    m, g = crop // 14, (crop // 14 + 1) // 2
    rows, cols = (out["image_sizes"][0] // crop).tolist()
    assert 1 <= rows * cols <= max_crops
    mask = out["image_attention_mask"][0]
    assert mask.shape == (1 + rows * cols, m, m) and bool(mask[0].all())
    # the pooled (even-position) mask of the sub-crop grid is a top-left rectangle
    grid = mask[1:, ::2, ::2].reshape(rows, cols, g, g).transpose(1, 2).reshape(rows * g, cols * g)
    uh, uw = int(grid[:, 0].sum()), int(grid[0].sum())
    assert int(grid.sum()) == uh * uw and uh >= 1 and uw >= 1
    assert out["num_img_tokens"] == [g * g + g + 1 + uh * uw + uh] == [ours.num_tokens(w, h)]
    ref = Phi4MultimodalImageProcessor(size={"height": crop, "width": crop}, dynamic_hd=max_crops)([img], return_tensors="pt")
    assert torch.equal(ref["image_attention_mask"], out["image_attention_mask"])
    assert torch.equal(ref["image_sizes"], out["image_sizes"])
    assert out["num_img_tokens"] == [_reference_tokens(int(ref["num_img_tokens"][0]), crop)]


# -- bad input ----------------------------------------------------------------------------
def _png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    drawn_image(w, h).save(buf, "PNG")
    return buf.getvalue()


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError) as e:
        ImageTransform(VisionConfig(image_size=56))([str(path)])
    assert e.value.item == str(path) and "not found" in e.value.reason


def test_corrupt_file(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert e.value.item == str(path) and "not a readable image" in e.value.reason


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.png"
    data = _png_bytes(120, 100)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert e.value.item == str(path) and "truncated" in e.value.reason


@pytest.mark.parametrize("mode", ["F", "LAB"])
def test_unsupported_mode(tmp_path, mode):
    img = Image.new(mode, (30, 20))
    with pytest.raises(ImageError) as e:
        ImageTransform(VisionConfig(image_size=56))([drawn_image(60, 60), img])
    assert e.value.item == "image[1]" and repr(mode) in e.value.reason
    if mode == "F":
        path = tmp_path / "float.tif"
        img.save(path)
        with pytest.raises(ImageError) as e:
            load_image(path)
        assert e.value.item == str(path) and "'F'" in e.value.reason


def test_sixteen_bit_and_other_modes_convert():
    a = np.full((20, 30), 40000, dtype=np.uint16)
    rgb = load_image(Image.fromarray(a))
    assert rgb.mode == "RGB" and np.asarray(rgb)[0, 0].tolist() == [156, 156, 156]  # 40000 * 255 / 65535
    for mode in ("1", "L", "LA", "P", "PA", "CMYK", "YCbCr", "RGBX", "RGBa"):
        assert load_image(Image.new(mode, (5, 4))).mode == "RGB"
    la = Image.new("LA", (3, 3), (0, 0))  # fully transparent black -> white
    assert np.asarray(load_image(la))[0, 0].tolist() == [255, 255, 255]


def test_over_pixel_limit_checked_before_decoding(tmp_path):
    # a 3000x3000 header with truncated data: the limit must fire first (nothing is decoded)
    data = _png_bytes(3000, 3000)
    path = tmp_path / "big.png"
    path.write_bytes(data[:2000])
    with pytest.raises(ImageError) as e:
        load_image(path, max_pixels=1_000_000)
    assert e.value.item == str(path) and "9000000 pixels exceeds the limit of 1000000" in e.value.reason
    with pytest.raises(ImageError) as e:
        ImageTransform(VisionConfig(image_size=56, max_image_pixels=5000))([drawn_image(100, 60)])
    assert e.value.item == "image[0]" and "exceeds the limit" in e.value.reason


def test_pil_decompression_bomb_becomes_image_error(tmp_path):
    # a header claiming 100000 x 100000 pixels: PIL's own guard refuses it at open
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    path = tmp_path / "bomb.png"
    path.write_bytes(png + chunk(b"IEND", b""))
    with pytest.raises(ImageError) as e:
        load_image(path, max_pixels=None)
    assert e.value.item == str(path) and "decompression bomb" in e.value.reason
