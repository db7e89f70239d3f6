"""A frozen linear layer with a weight-only quantised weight: int8, int4 or nf4.

=======  ==========================================================  ==========================================
scheme   storage                                                     forward
=======  ==========================================================  ==========================================
int8     int8 codes [N, K], symmetric per-output-channel scales      ``aten._weight_int8pack_mm`` on the CPU
         (absmax / 127)                                              (float32 / bfloat16 / float16 inputs);
                                                                     dequantise-and-matmul elsewhere
int4     4-bit codes packed by ``aten._convert_weight_to_int4pack_    ``aten._weight_int4pack_mm_for_cpu`` on the
         for_cpu`` [N, K / 2] uint8, per-group (``group_size`` along  CPU (same input dtypes); dequantise-and-
         K, default 128) scale and zero: w = (q - 8) * scale + zero  matmul elsewhere (CUDA's
                                                                     ``_weight_int4pack_mm`` is not wired: untested)
nf4      QLoRA's NormalFloat4 code book, per-block absmax (block     dequantise-and-matmul (torch has no nf4
         64 along K), codes two per byte [N, K / 2]                  kernel; bitsandbytes, which has one, is not
                                                                     a dependency and has no CPU kernel faster
                                                                     than this here)
=======  ==========================================================  ==========================================

The weight is frozen: backward gives the gradient of the input only, ``grad_x = grad_y @ W`` through
the dequantised weight (``_QuantizedMatmul``), so LoRA adapters around the layer get their gradients and
the quantised tensors (buffers) never get one. ``last_kernel`` names the kernel the last call ran
(``kernels_used(model)`` collects them), for benchmarks and tests.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["QuantizedLinear", "SCHEMES", "kernels_used", "nf4_code_book"]

SCHEMES = ("int8", "int4", "nf4")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what torch's CPU int8 / int4 kernels accept
INT4_BLOCK_N = 64  # output rows per block of the CPU int4 packing


def nf4_code_book() -> torch.Tensor:
    """The 16 NormalFloat4 values (Dettmers et al. 2023, QLoRA, appendix E), from their definition:
    quantiles of N(0, 1), 8 on the positive side and 7 on the negative one so that 0 is exact, scaled
    into [-1, 1]."""
    offset = 0.9677083  # (1 - 1/(2*15) + 1 - 1/(2*16)) / 2: the paper's outermost quantile
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (values / values.max()).float()


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in 0..15 -> [N, K / 2] uint8 (even k in the low nibble)."""
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def _unpack_int4_cpu_layout(packed: torch.Tensor) -> torch.Tensor:
    """Codes [N, K] from ``_convert_weight_to_int4pack_for_cpu``'s layout: per block of 64 output rows,
    for each k 32 bytes whose low nibbles are rows 0..31 of the block and high nibbles rows 32..63."""
    n, half_k = packed.shape
    k = 2 * half_k
    blocks = packed.reshape(n // INT4_BLOCK_N, k, INT4_BLOCK_N // 2)
    codes = torch.cat([blocks & 15, blocks >> 4], dim=2)  # [N / 64, K, 64]
    return codes.transpose(1, 2).reshape(n, k)


def _divisor_at_most(size: int, k: int) -> int:
    """The largest of size, size / 2, ... (down to 16) that divides k; 0 when none does."""
    while size >= 16:
        if k % size == 0:
            return size
        size //= 2
    return 0


class _QuantizedMatmul(torch.autograd.Function):
    """y = x @ W^T through the layer's kernel; backward: the input's gradient only (W is frozen)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return layer.matmul(x)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.layer.dequantize(grad.dtype)
        return grad @ w, None


class QuantizedLinear(nn.Module):
    """Weight-only quantised ``nn.Linear`` (frozen). Build with `QuantizedLinear.from_linear`."""

    def __init__(self, in_features: int, out_features: int, scheme: str, *, block: int, bias: torch.Tensor | None,
                 dtype: torch.dtype):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown quantisation scheme {scheme!r}; known: {SCHEMES}")
        self.in_features, self.out_features, self.scheme, self.block = in_features, out_features, scheme, block
        # empty: its dtype and device follow the module's casts and moves (``model.to(torch.bfloat16)``)
        self.register_buffer("compute", torch.empty(0, dtype=dtype), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.last_kernel: str | None = None
        self._casts: dict = {}  # the scales in a kernel's input dtype, made once (see _cast)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, scheme: str, group_size: int = 128,
                    block_size: int = 64) -> "QuantizedLinear":
        """``group_size``: int4's group along the input dimension (halved until it divides it);
        ``block_size``: nf4's absmax block (likewise)."""
        w = linear.weight.detach()
        n, k = w.shape
        size = {"int8": k, "int4": group_size, "nf4": block_size}.get(scheme, k)
        block = _divisor_at_most(size, k) if scheme != "int8" else k
        if not block or (scheme != "int8" and k % 2):
            raise ValueError(f"{scheme}: input size {k} has no block of at most {size} dividing it")
        layer = cls(k, n, scheme, block=block, bias=linear.bias, dtype=w.dtype)
        getattr(layer, f"_quantize_{scheme}")(w.float())
        return layer

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the layer stands in for: the float weight's, or the one the model was cast to since."""
        return self.compute.dtype

    # -- quantisation ----------------------------------------------------------------------------
    def _quantize_int8(self, w: torch.Tensor) -> None:
        scales = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        self.register_buffer("qweight", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales)

    def _quantize_int4(self, w: torch.Tensor) -> None:
        n, k = w.shape
        g = w.reshape(n, k // self.block, self.block)
        low, high = g.amin(dim=2), g.amax(dim=2)
        scale = ((high - low) / 15).clamp_min(torch.finfo(torch.float32).tiny)
        codes = torch.round((g - low[..., None]) / scale[..., None]).clamp(0, 15).reshape(n, k).to(torch.int32)
        zero = low + 8 * scale  # the kernels' convention: w = (q - 8) * scale + zero
        # [K / group, N, 2]: scale and zero per group and output row, as the int4 kernels read them
        self.register_buffer("scales_zeros", torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous())
        if n % INT4_BLOCK_N == 0:
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.cpu(), 1)
                                 .to(w.device))
            self.packing = "cpu"
        else:  # rows the CPU packing cannot block: a plain nibble layout, dequantised at each call
            self.register_buffer("qweight", _pack_nibbles(codes))
            self.packing = "nibbles"

    def _quantize_nf4(self, w: torch.Tensor) -> None:
        n, k = w.shape
        g = w.reshape(n, k // self.block, self.block)
        absmax = g.abs().amax(dim=2).clamp_min(torch.finfo(torch.float32).tiny)
        book = nf4_code_book().to(w.device)
        codes = (g / absmax[..., None]).unsqueeze(-1).sub(book).abs().argmin(dim=-1).reshape(n, k)
        self.register_buffer("qweight", _pack_nibbles(codes))
        self.register_buffer("absmax", absmax)
        self.register_buffer("code_book", book, persistent=False)

    # -- use -------------------------------------------------------------------------------------
    @torch.no_grad()
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense weight [N, K] the codes stand for, in ``dtype`` (default: the original dtype)."""
        dtype = dtype or self.dtype
        n, k = self.out_features, self.in_features
        if self.scheme == "int8":
            return (self.qweight.float() * self.scales.float()[:, None]).to(dtype)
        if self.scheme == "int4":
            codes = _unpack_int4_cpu_layout(self.qweight) if self.packing == "cpu" else _unpack_nibbles(self.qweight)
            sz = self.scales_zeros.float().transpose(0, 1)  # [N, K / group, 2]
            g = (codes.reshape(n, k // self.block, self.block).float() - 8) * sz[..., :1] + sz[..., 1:]
            return g.reshape(n, k).to(dtype)
        codes = _unpack_nibbles(self.qweight).long()
        g = self.code_book.to(self.absmax.device)[codes].reshape(n, k // self.block, self.block)
        return (g * self.absmax.float()[..., None]).reshape(n, k).to(dtype)

    def kernel_for(self, x: torch.Tensor) -> str:
        """The kernel a call with input ``x`` runs."""
        on_cpu = x.device.type == "cpu" and x.dtype in KERNEL_DTYPES
        if self.scheme == "int8" and on_cpu:
            return "aten._weight_int8pack_mm"
        if self.scheme == "int4" and on_cpu and self.packing == "cpu" and self.block in (32, 64, 128, 256):
            return "aten._weight_int4pack_mm_for_cpu"
        return "dequantize+matmul"

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] @ W^T without the bias, no autograd."""
        kernel = self.kernel_for(x)
        self.last_kernel = kernel
        flat = x.reshape(-1, self.in_features)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        if kernel == "aten._weight_int8pack_mm":
            y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self._cast("scales", x.dtype))
        elif kernel == "aten._weight_int4pack_mm_for_cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qweight, self.block,
                                                             self._cast("scales_zeros", x.dtype))
        else:
            y = flat @ self.dequantize(x.dtype).t()
        return y.view(*x.shape[:-1], self.out_features)

    def _cast(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Buffer ``name`` in ``dtype``: a copy made once per dtype, not at every call (a decode step calls
        each linear once), and made again when the buffer moves or is written in place."""
        t = getattr(self, name)
        if t.dtype == dtype:
            return t
        stamp = (t.device, t.data_ptr(), t._version)
        hit = self._casts.get((name, dtype))
        if hit is None or hit[0] != stamp:
            hit = self._casts[(name, dtype)] = (stamp, t.to(dtype))
        return hit[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _QuantizedMatmul.apply(x, self) if torch.is_grad_enabled() and x.requires_grad else self.matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        what = {"int8": "per-channel", "int4": f"group={self.block}", "nf4": f"block={self.block}"}[self.scheme]
        return f"in={self.in_features}, out={self.out_features}, {self.scheme} ({what}), dtype={self.dtype}"


def kernels_used(model: nn.Module) -> dict[str, int]:
    """How many quantised linears of ``model`` ran each kernel in their last call."""
    out: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, QuantizedLinear) and m.last_kernel:
            out[m.last_kernel] = out.get(m.last_kernel, 0) + 1
    return out
