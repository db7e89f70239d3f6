"""Image loading and the Phi-4-multimodal HD transform (dynamic crops + global view).

``load_image`` turns an image as people hold it into an RGB PIL image, or raises ``ImageError``
naming the item and the reason (missing, corrupt, truncated, unsupported mode, too many
pixels, a URL). Accepted:

* a path (``str`` / ``PathLike``); URLs are refused (molora works offline: download the file);
* a PIL image (any mode; alpha composited on white, 16-bit scaled to 8 bits);
* a numpy array or torch tensor, as transformers' image processors take them: ``[H, W]``
  (grey), ``[C, H, W]`` or ``[H, W, C]`` with C in 1, 3, 4 (channels first when the first axis
  could be channels, as transformers infers them; C = 4 is RGBA). ``uint8`` (and other integer
  types holding 0..255) is used as is; floating point must hold values in [0, 1] (the torchvision
  convention: ``x / 255``) and is mapped to ``round(255 x)``, so ``arr / 255`` gives exactly the PIL
  result; anything else (bool, complex, NaN, floats above 1) is refused.

``as_image_list`` reads a batch: a list or tuple, or a 4-D array / tensor ``[N, ...]``. ``ImageTransform`` produces exactly what transformers' ``Phi4MultimodalImageProcessor``
produces (same keys, shapes, dtypes and values), written as whole-tensor operations:

1. pick a crop grid: ``ceil(W/S) x ceil(H/S)`` crops of ``S`` pixels, or, past ``dynamic_hd``
   crops, the grid whose aspect ratio is closest to the image's;
2. resize keeping the aspect ratio (bilinear, antialiased, on uint8) and pad right/bottom
   with white; patches that are entirely padding are masked out;
3. normalise with mean = std = 0.5; the global view is a bicubic resize of the whole
   normalised canvas to ``S x S``; crops are written straight into the padded output batch.
"""
from __future__ import annotations

import math
import os
import re
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as tvF

from molora.config import VisionConfig
from molora.errors import ArgumentError, ImageError

__all__ = ["load_image", "as_image_list", "ImageTransform", "CropPlan", "refuse_url"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def refuse_url(value, item: str, error=ImageError) -> None:
    """Raise ``error`` when ``value`` is a URL string: molora never downloads media."""
    if isinstance(value, str) and _URL.match(value.strip()):
        raise error("is a URL; molora does not download media (it runs offline): download the file and pass "
                    "its local path", item)

# Modes PIL would "convert" to RGB without meaning: float images and CIELAB are refused.
_REFUSED_MODES = {"F", "LAB"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def _open(path: Path, item: str, max_pixels: int | None) -> Image.Image:
    if not path.exists():
        raise ImageError("file not found", item)
    if path.is_dir():
        raise ImageError("is a directory, not an image file", item)
    try:
        with warnings.catch_warnings():
            # PIL's own bomb *warning* is replaced by our limit, checked just below on the header.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageError(f"too many pixels, refused before decoding (decompression bomb guard: {e})", item) from None
    except UnidentifiedImageError:
        raise ImageError("not a readable image (corrupt file or unknown format)", item) from None
    except OSError as e:
        raise ImageError(f"cannot read file ({e})", item) from None
    try:
        _check_pixels(img, item, max_pixels)  # header size only: nothing decoded yet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except ImageError:
        img.close()  # refused: do not leave the file open
        raise
    except Image.DecompressionBombError as e:
        img.close()
        raise ImageError(f"too many pixels (decompression bomb guard: {e})", item) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        img.close()
        reason = "truncated image data" if "truncated" in str(e).lower() else "corrupt image data"
        raise ImageError(f"{reason} ({e})", item) from None
    try:
        return ImageOps.exif_transpose(img)  # upright, as transformers' loaders return it
    except Exception:  # a broken EXIF block must not make the pixels unusable
        return img


def _check_pixels(img: Image.Image, item: str, max_pixels: int | None) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"empty image ({w}x{h})", item)
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (vision.max_image_pixels; "
            "decompression bomb guard)", item)


def _to_rgb(img: Image.Image, item: str) -> Image.Image:
    mode = img.mode
    if mode in _REFUSED_MODES:
        raise ImageError(f"unsupported image mode {mode!r} (convert it to RGB first)", item)
    if mode in _SIXTEEN_BIT_MODES:
        # PIL's convert("RGB") clips these at 255; map the 16-bit range onto 8 bits instead.
        a = np.asarray(img).astype(np.float64)
        if a.size and a.max() > 255:
            a = a * (255.0 / 65535.0)
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        mode = "L"
    has_alpha = "A" in img.getbands() or "a" in img.getbands() or img.info.get("transparency") is not None
    try:
        if has_alpha:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img if mode == "RGB" else img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"unsupported image mode {mode!r} ({e})", item) from None


def _array_to_pil(image, item: str) -> Image.Image:
    """A numpy array / torch tensor (module docstring rules) -> PIL image (L, RGB or RGBA)."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        arr = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 3:
        if arr.shape[0] in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)
        elif arr.shape[-1] not in (1, 3, 4):
            raise ImageError(f"cannot tell the channel axis of an array of shape {tuple(arr.shape)} (expected "
                             "[H, W], [C, H, W] or [H, W, C] with C in 1, 3, 4)", item)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    elif arr.ndim != 2:
        raise ImageError(f"an image array must be [H, W], [C, H, W] or [H, W, C], got shape {tuple(arr.shape)}", item)
    kind = arr.dtype.kind
    if kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError("image array holds NaN or infinite values", item)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        if lo < 0.0 or hi > 1.0:
            raise ImageError(f"a floating-point image must hold values in [0, 1] (got {lo:g}..{hi:g}); divide by "
                             "255 or pass uint8", item)
        arr = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    elif kind in "iu":
        if arr.dtype != np.uint8:
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
                raise ImageError(f"an integer image must hold values in 0..255 (got {int(arr.min())}..{int(arr.max())}"
                                 f", dtype {arr.dtype})", item)
            arr = arr.astype(np.uint8)
    else:
        raise ImageError(f"unsupported image array dtype {arr.dtype} (use uint8, or floats in [0, 1])", item)
    return Image.fromarray(np.ascontiguousarray(arr))   # uint8 [H, W] / [H, W, 3] / [H, W, 4]: L / RGB / RGBA


def as_image_list(images: Any) -> list:
    """A batch of images as a list: a list / tuple as given (one level of nesting, transformers'
    images-per-prompt lists ``[[a, b], [c]]``, flattened in order), a 4-D array or tensor split on its
    first axis, anything else as one image."""
    if isinstance(images, (list, tuple)):
        return [im for x in images for im in (x if isinstance(x, (list, tuple)) else [x])]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def load_image(image, *, max_pixels: int | None = VisionConfig.max_image_pixels,
               item: str | None = None) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, a numpy array or a torch tensor (module docstring), or
    ``ImageError(reason, item)``.

    Transparency is composited on white; L, LA, P, PA, CMYK, YCbCr, 1-bit and 16-bit
    images are converted (16-bit scaled to 8 bits); float (``F``) and ``LAB`` are refused.
    ``max_pixels`` (W*H) is checked on the file header, before any pixel is decoded.
    Paths get their EXIF orientation applied; PIL images and arrays are used as given.
    """
    if isinstance(image, (str, os.PathLike)):
        if not str(image).strip():
            raise ImageError("empty path", item or "image")
        item = item or str(image)
        refuse_url(str(image), item)
        img = _open(Path(image), item, max_pixels)
    elif isinstance(image, Image.Image):
        item = item or "image"
        _check_pixels(image, item, max_pixels)
        img = image
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"corrupt or truncated image data ({e})", item) from None
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        item = item or "image"
        img = _array_to_pil(image, item)
        _check_pixels(img, item, max_pixels)
    else:
        raise ImageError(f"expected a path, a PIL image, a numpy array or a torch tensor, got {type(image).__name__}",
                         item or "image")
    return _to_rgb(img, item)


# --------------------------------------------------------------------------------------
# crop planning (pure Python: also tells the processor how many tokens an image takes)
# --------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _candidate_grids(max_crops: int, min_crops: int = 1) -> tuple[tuple[int, int], ...]:
    # Same candidate set and the same (product-sorted, stable) order as the reference, so
    # that ties in the aspect-ratio search resolve identically.
    grids = {(i, j) for n in range(min_crops, max_crops + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if min_crops <= i * j <= max_crops}
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def _closest_grid(width: int, height: int, crop: int, max_crops: int) -> tuple[int, int]:
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in _candidate_grids(max_crops):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * crop * crop * cols * rows:
            best = (cols, rows)
    return best


@dataclass(frozen=True)
class CropPlan:
    """Where one image goes: a ``rows x cols`` grid of ``crop`` pixel crops."""

    cols: int
    rows: int
    new_width: int  # size after the aspect-preserving resize
    new_height: int
    valid_cols: int  # patch columns / rows not masked as padding
    valid_rows: int
    crop: int
    patch: int

    @property
    def num_crops(self) -> int:
        return self.rows * self.cols

    @property
    def patches_per_side(self) -> int:
        return self.crop // self.patch

    @property
    def pooled_per_side(self) -> int:
        return (self.patches_per_side + 1) // 2  # 2x2 pooling, reflection-padded when odd

    def useful_pooled(self) -> tuple[int, int]:
        """Rows and columns of the pooled sub-crop grid that hold image content."""
        m, g = self.patches_per_side, self.pooled_per_side

        def count(n_cells: int, valid: int) -> int:
            # pooled cell y of crop r samples patch r*m + 2y (the mask's [0::2] subsampling)
            return sum(min(g, max(0, -(-(valid - r * m) // 2))) for r in range(n_cells))

        return count(self.rows, self.valid_rows), count(self.cols, self.valid_cols)

    @property
    def num_tokens(self) -> int:
        """Tokens the image becomes: global grid + its row separators + glb_GN + trimmed sub grid + separators."""
        g = self.pooled_per_side
        uh, uw = self.useful_pooled()
        return g * g + g + 1 + uh * uw + uh


def plan_crops(width: int, height: int, crop: int, patch: int, max_crops: int, item: str = "image") -> CropPlan:
    """The reference's crop grid / resize / padding decision for a ``width x height`` image."""
    cols, rows = math.ceil(width / crop), math.ceil(height / crop)
    if cols * rows > max_crops:
        cols, rows = _closest_grid(width, height, crop, max_crops)
    target_w, target_h = crop * cols, crop * rows
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        new_w, new_h = target_w, int(height * scale_w)
    else:
        new_w, new_h = int(width * scale_h), target_h
    if min(new_w, new_h) < 10:
        raise ImageError(f"aspect ratio too extreme: {width}x{height} would be resized to {new_w}x{new_h} "
                         "(under 10 pixels on one side)", item)
    m = crop // patch
    return CropPlan(cols=cols, rows=rows, new_width=new_w, new_height=new_h,
                    valid_cols=cols * m - (target_w - new_w) // patch,
                    valid_rows=rows * m - (target_h - new_h) // patch, crop=crop, patch=patch)


# --------------------------------------------------------------------------------------
# the transform
# --------------------------------------------------------------------------------------
def _as_uint8_chw(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img)  # H, W, 3 uint8 (read-only view of PIL's bytes; never written)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr).permute(2, 0, 1)  # channels-last strides: the uint8 resize likes them


class ImageTransform:
    """The Phi-4-multimodal HD image transform, equal to transformers' ``Phi4MultimodalImageProcessor``.

    ``ImageTransform(config)(images)`` with one image or a batch (PIL images, paths, arrays, tensors:
    ``load_image``; a list or a 4-D array / tensor) returns
    a ``transformers.BatchFeature`` holding
    ``image_pixel_values`` float32 [N, C, 3, S, S] (C = 1 + most crops in the batch; slot 0 is
    the global view, unused slots are zeros), ``image_sizes`` int64 [N, 2] (padded canvas
    height, width), ``image_attention_mask`` float32 [N, C, S/p, S/p] (1 = real patch; unused
    slots are ones) and ``num_img_tokens`` (list of int). S = the crop size (``config.crop``), p = patch
    size, at most ``config.dynamic_hd`` crops per image (``dynamic_hd=`` overrides it for one call, as in
    transformers' processor).
    """

    model_input_names = ["image_pixel_values", "image_sizes", "image_attention_mask"]

    MEAN = 127.5  # 0.5 * 255: mean = std = 0.5 on [0, 1] pixels, applied to uint8 values
    STD = 127.5

    def __init__(self, config: VisionConfig | None = None):
        config = config or VisionConfig()
        self.crop_size = config.crop
        self.patch_size = config.patch_size
        self.max_crops = config.dynamic_hd
        self.max_image_pixels = config.max_image_pixels
        self._local = threading.local()
        if self.crop_size % self.patch_size:
            raise ImageError(f"the crop size {self.crop_size} must be a multiple of patch_size {self.patch_size}",
                             "vision config")

    def plan(self, width: int, height: int, item: str = "image", max_crops: int | None = None) -> CropPlan:
        return plan_crops(width, height, self.crop_size, self.patch_size, max_crops or self.max_crops, item)

    def num_tokens(self, width: int, height: int) -> int:
        """Image tokens for a ``width x height`` image, without touching pixels."""
        return self.plan(width, height).num_tokens

    def load(self, images: Any) -> tuple[list[Image.Image], list[str]]:
        """RGB PIL images and their item names ("image[k]" or the path) for one image or a batch
        (``as_image_list``)."""
        raw = as_image_list(images)
        names = [str(im) if isinstance(im, (str, os.PathLike)) else f"image[{k}]" for k, im in enumerate(raw)]
        pils = [load_image(im, max_pixels=self.max_image_pixels, item=name) for im, name in zip(raw, names)]
        return pils, names

    def __call__(self, images: Any, dynamic_hd: int | None = None, return_tensors: str | None = "pt"):
        from transformers import BatchFeature

        if dynamic_hd is not None and (isinstance(dynamic_hd, bool) or not isinstance(dynamic_hd, int)
                                       or dynamic_hd < 1):
            raise ArgumentError(f"must be a positive integer (crops per image), got {dynamic_hd!r}", "dynamic_hd")
        pils, items = self.load(images)
        if not pils:
            raise ImageError("no images given", "images")
        plans = [self.plan(*im.size, item=items[k], max_crops=dynamic_hd) for k, im in enumerate(pils)]
        S, m = self.crop_size, self.crop_size // self.patch_size
        slots = 1 + max(p.num_crops for p in plans)
        n = len(pils)

        # np.zeros is calloc-backed: unused crop slots stay untouched zero pages, never written.
        pixels = torch.from_numpy(np.zeros((n, slots, 3, S, S), dtype=np.float32))
        masks = torch.ones(n, slots, m, m, dtype=torch.float32)
        sizes = torch.empty(n, 2, dtype=torch.long)
        for i, (img, p) in enumerate(zip(pils, plans)):
            self._fill(pixels[i], masks[i], img, p)
            sizes[i, 0], sizes[i, 1] = p.rows * S, p.cols * S
        return BatchFeature({
            "image_pixel_values": pixels,
            "image_sizes": sizes,
            "image_attention_mask": masks,
            "num_img_tokens": [p.num_tokens for p in plans],
        }, tensor_type=None if return_tensors == "pt" else return_tensors)

    def _scratch(self, numel: int) -> torch.Tensor:
        # A float canvas reused across images and calls (one per thread): fresh memory costs a
        # page fault per 4 KiB, which is most of the time an unreused canvas would take.
        buf = getattr(self._local, "canvas", None)
        if buf is None or buf.numel() < numel:
            buf = self._local.canvas = torch.empty(numel, dtype=torch.float32)
        return buf[:numel]

    def release(self) -> None:
        """Free the reused canvas buffer (it holds up to max_crops * 3 * S * S floats)."""
        self._local.__dict__.pop("canvas", None)

    def __getstate__(self) -> dict:  # a copy for another process (collation workers) starts without a canvas
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _fill(self, pixels: torch.Tensor, masks: torch.Tensor, img: Image.Image, p: CropPlan) -> None:
        S, m, rows, cols = self.crop_size, self.crop_size // self.patch_size, p.rows, p.cols
        k, nh, nw = p.num_crops, p.new_height, p.new_width
        resized = tvF.resize(_as_uint8_chw(img), [nh, nw], antialias=True)  # uint8, bilinear, antialiased
        # normalised canvas: (x - 127.5) / 127.5 where the image is, exactly 1.0 (white) in the padding
        canvas = self._scratch(3 * rows * S * cols * S).view(3, rows * S, cols * S)
        canvas[:, :nh, :nw].copy_(resized).sub_(self.MEAN).div_(self.STD)  # same ops/rounding as the reference
        canvas[:, nh:, :].fill_(1.0)
        canvas[:, :nh, nw:].fill_(1.0)
        # global view: bicubic, no antialias, of the whole canvas, written into slot 0
        if (rows, cols) == (1, 1):
            pixels[0].copy_(canvas)
        else:
            torch.ops.aten.upsample_bicubic2d.out(canvas[None], [S, S], False, None, None, out=pixels[0:1])
        # crops in row-major order, written straight into their slots (unused slots are already zeros)
        pixels[1 : 1 + k].view(rows, cols, 3, S, S).copy_(canvas.view(3, rows, S, cols, S).permute(1, 3, 0, 2, 4))
        # patch mask: a patch is padding iff it lies past the valid rows / columns
        valid_r = torch.arange(rows * m).view(rows, m) < p.valid_rows
        valid_c = torch.arange(cols * m).view(cols, m) < p.valid_cols
        masks[1 : 1 + k].copy_((valid_r[:, None, :, None] & valid_c[None, :, None, :]).reshape(k, m, m))
