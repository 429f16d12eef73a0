"""Every breccia recipe's dequantize in plain torch: on any device, with no NumPy round trip.

``dequantize`` is breccia's own dequantize, bit for bit (every value is the fp32 product
breccia computes: decoded code times its scale, or ``(q - z) * s`` for INT4 with zero points).
``dequantize_as`` gives the same values rounded to an activation dtype, which is what the
emulated kernel multiplies by: the codes' bits moved into fp32 with integer shifts, then the
scale, all in place on one copy (torch's own FP8 conversion and table gathers run per element
on a CPU, ~30x slower than a BF16 matmul of the same weight; fresh temporaries cost page
faults on every call).

Weights are as SGLang holds them (``integration/sglang_params.py``): ``data`` is (N, K)
float8_e4m3fn for per-tensor and block FP8, (N, K) uint8 codes for MXFP8, and (N, K / 2) bytes
for NVFP4 and INT4, two codes each (``packing.py``: the even element in the low nibble); ``scale``
is one value per tensor, one per merged shard (``shard_widths`` rows each), or one per row
and K block; ``zero_point`` has the scale's shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from breccia.layouts import PerTensor

from ..format.recipes import block_width, packs_two_per_byte
from .codes import decode_e2m1, decode_e8m0, decode_fp8, decode_int4
from .packing import unpack_low_first


def decode(data: torch.Tensor, recipe) -> torch.Tensor:
    """The codes' values, fp32 (before scaling)."""
    if recipe.name == "nvfp4":
        return decode_e2m1(data)
    if recipe.name == "int4":
        return decode_int4(data, signed=recipe.signed)
    return decode_fp8(data, recipe.fp8_format)


def scale_values(scale: torch.Tensor, recipe) -> torch.Tensor:
    """The scales' values, fp32: MXFP8 stores E8M0 exponents and NVFP4 E4M3 codes as bytes."""
    if recipe.name == "mxfp8":
        return decode_e8m0(scale)
    if recipe.name == "nvfp4":
        return decode_fp8(scale, "E4M3")
    return scale.to(torch.float32)


def dequantize(data: torch.Tensor, scale: torch.Tensor, recipe, layout, zero_point: torch.Tensor | None = None,
               *, shard_widths: Sequence[int] | None = None) -> torch.Tensor:
    """The weight breccia.dequantize gives, (N, K) fp32."""
    if packs_two_per_byte(recipe):
        data = unpack_low_first(data)
    if isinstance(layout, PerTensor):
        return decode(data, recipe) * row_scales(scale, shard_widths, data.shape[0])[:, None]
    rows, k = data.shape
    width = block_width(layout)
    values = decode(data, recipe).view(rows, k // width, width)
    return _scaled_blocks(values, scale, zero_point, recipe).view(rows, k)


def dequantize_as(data: torch.Tensor, scale: torch.Tensor, recipe, layout, zero_point: torch.Tensor | None = None,
                  *, dtype: torch.dtype, shard_widths: Sequence[int] | None = None,
                  nan_free: bool | None = None, small_scales: bool | None = None) -> torch.Tensor:
    """``dequantize(...).to(dtype)``, bit for bit, fast: a few in-place passes over one int32
    copy of the codes, no fp32 weight beside it. ``nan_free``: the codes hold no FP8 NaN code
    (0x7F / 0xFF), which the bit moves would not decode as NaN; ``small_scales``: every scale is
    below 2^8 (``scales_fit_bit_moves``). None checks, which reads a value on the host: a forward
    pass on a GPU (captured in a CUDA graph) passes both, found once after loading."""
    rows, k = data.shape[0], data.shape[1] * (2 if packs_two_per_byte(recipe) else 1)
    width = k if isinstance(layout, PerTensor) else block_width(layout)
    if isinstance(layout, PerTensor):
        scale = row_scales(scale, shard_widths, rows)[:, None]
    else:
        scale = scale_values(scale, recipe)
    if recipe.name == "int4":
        values = _int4_values(data, recipe.signed).view(rows, k // width, width)
        if zero_point is not None:
            values.sub_(zero_point.to(torch.float32)[..., None])
        values.mul_(scale[..., None])
    elif recipe.name == "nvfp4":
        values = _scaled_e2m1(data, scale).view(rows, k // width, width)
        values.mul_(scale[..., None])
    elif recipe.fp8_format == "E4M3" and (small_scales if small_scales is not None else bool(scale.max() < 256)) and \
            (nan_free if nan_free is not None else not has_nan_codes(data)):
        values = _scaled_e4m3(data).view(rows, k // width, width)
        values.mul_((scale * E4M3_BITS_SCALE)[..., None])
    else:  # E5M2 codes, or NaN codes: torch's conversion
        values = decode(data, recipe).view(rows, k // width, width)
        values.mul_(scale[..., None])
    return values.view(rows, k).to(dtype)


# E4M3 code c, moved into fp32 bits: sign to bit 31, exponent and mantissa to bits 20-26. Read
# as fp32 that is exactly value * 2^-120 (E4M3's exponent bias is 120 below fp32's; subnormal
# codes land on fp32 subnormals), so one multiply by scale * 2^120 gives fl(value * scale),
# the product breccia rounds, whenever scale * 2^120 is finite (scale < 2^8: FP8 weight scales
# are amax / 448). E4M3's NaN codes (0x7F, 0xFF) would read as +-480.
E4M3_BITS_SCALE = 2.0**120


def scales_fit_bit_moves(scale: torch.Tensor, recipe) -> bool:
    """Whether every scale is below 2^8, so the E4M3 bit moves' scale * 2^120 stays finite (FP8
    weight scales are amax / 448). One host read: call it once, after loading."""
    return bool(scale_values(scale, recipe).max() < 256)


def has_nan_codes(data: torch.Tensor) -> bool:
    return bool(((data.view(torch.uint8) & 0x7F) == 0x7F).any())


def _scaled_e4m3(data: torch.Tensor) -> torch.Tensor:
    bits = data.view(torch.uint8).to(torch.int32)
    bits.bitwise_left_shift_(24).bitwise_right_shift_(4).bitwise_and_(0x87FFFFFF)
    return bits.view(torch.float32)


def _scaled_e2m1(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # E2M1 code c: sign to bit 31, its 2 exponent and 1 mantissa bits to bits 22-24, which reads
    # as value * 2^-126 exactly; two exact multiplies by 2^63 make it the value again.
    bits = unpack_low_first(packed, torch.int32)
    sign = (bits & 0x8).bitwise_left_shift_(28)
    bits.bitwise_and_(0x7).bitwise_left_shift_(22).bitwise_or_(sign)
    return bits.view(torch.float32).mul_(2.0**63).mul_(2.0**63)


def _int4_values(packed: torch.Tensor, signed: bool) -> torch.Tensor:
    codes = unpack_low_first(packed, torch.int32)
    if signed:  # two's complement: bit 3 into the sign
        codes.bitwise_left_shift_(28).bitwise_right_shift_(28)
    return codes.to(torch.float32)


def _scaled_blocks(values, scale, zero_point, recipe) -> torch.Tensor:
    s = scale_values(scale, recipe)[..., None]
    if zero_point is None:
        return values * s
    return (values - zero_point.to(torch.float32)[..., None]) * s


def row_scales(scale: torch.Tensor, shard_widths, rows: int) -> torch.Tensor:
    """One fp32 scale per row: per-tensor, or per merged shard (qkv, gate_up keep one each)."""
    scale = scale.to(torch.float32).reshape(-1)
    if scale.numel() == 1:
        return scale.expand(rows)
    if shard_widths is None or len(shard_widths) != scale.numel() or sum(shard_widths) != rows:
        raise ValueError(f"{scale.numel()} per-shard scales need shard widths summing to {rows}, got {shard_widths}")
    return scale.repeat_interleave(torch.tensor(list(shard_widths), device=scale.device))
