"""A tile of 4-bit weight codes, packed two per byte, as its scaled fp32 values: what the W4A16
GEMM (``w4a16.py``) multiplies and the one-pass dequantize (``dequantize_packed.py``) writes out,
and the operand contract both check.

``packed`` (N, K / 2) uint8 holds element 2j of a row in the LOW nibble of byte j and 2j + 1 in
the high one (``weights.packing.pack_low_first``). A tile's values are computed as breccia's
dequantize computes them: each code's exact value, minus its zero point, times its scale, in
fp32 (one scale and zero point loaded per group, ``tiling.scaled_groups``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..attention.fp8_codec import e4m3_decode
from ..launch import check_tensor
from .tiling import scaled_groups

CODES = ("int4", "uint4", "e2m1")  # two's complement, unsigned 0..15 (zero points allowed), FP4 E2M1
GROUPS = (16, 32, 64, 128)  # K elements per scale: 16 for NVFP4 (e2m1), 32 / 64 / 128 for INT4
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)  # uint8: E4M3 codes
ZERO_POINT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def nibble_values(c, CODE: tl.constexpr):
    """int32 codes 0..15 -> their fp32 values before scaling (CODE: the index in ``CODES``)."""
    if CODE == 0:  # int4: two's complement
        return ((c ^ 8) - 8).to(tl.float32)
    elif CODE == 1:  # uint4
        return c.to(tl.float32)
    else:
        # e2m1: sign to fp16's sign bit, the 2 exponent and 1 mantissa bits to fp16's low
        # exponent and top mantissa bits. That reads as the value * 2^-14 (fp16's exponent bias is
        # 14 more than E2M1's), 0.5 (E2M1's subnormal) landing on an fp16 subnormal that the fp16 ->
        # fp32 conversion reads exactly; one multiply by 2^14 restores every value.
        bits = ((c & 8) << 12) | ((c & 7) << 9)
        return bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32) * 16384.0


@triton.jit
def unpacked_values(byte_rows, j, j_ok, CODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The (BLOCK_N, BLOCK_K) fp32 values of the codes in bytes ``j`` (BLOCK_K / 2 of them) of
    each row (``byte_rows``: the rows' first bytes), in K order; masked bytes read as code 0."""
    c = tl.load(byte_rows[:, None] + j[None, :], mask=j_ok, other=0).to(tl.int32)
    low, high = nibble_values(c & 15, CODE), nibble_values(c >> 4, CODE)
    return tl.reshape(tl.join(low, high), (BLOCK_N, BLOCK_K))  # element 2j then 2j + 1


@triton.jit
def scaled_values(values, scale_rows, zero_rows, k0, k_end, n_ok, stride_sk, stride_zk,
                  GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, SCALE_E4M3: tl.constexpr, NATIVE_FP8: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The K tile from ``k0`` of ``values`` (BLOCK_N rows, their scales and zero points at
    ``scale_rows`` / ``zero_rows``), (value - z) * s in fp32. Groups and tiles are powers of two:
    a tile holds whole groups, or one group covers it."""
    if GROUP % BLOCK_K == 0:  # one group covers the tile: one scale per row
        s_ptrs = scale_rows[:, None] + (k0 // GROUP) * stride_sk
        z_ptrs = zero_rows[:, None] + (k0 // GROUP) * stride_zk
        s_ok = n_ok[:, None]
    else:  # whole groups per tile: one scale per group
        g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        s_ptrs = scale_rows[:, None] + g[None, :] * stride_sk
        z_ptrs = zero_rows[:, None] + g[None, :] * stride_zk
        s_ok = n_ok[:, None] & (g * GROUP < k_end)[None, :]
    s = tl.load(s_ptrs, mask=s_ok, other=0)
    if SCALE_E4M3:
        s = e4m3_decode(s, tl.float32, NATIVE_FP8)
    else:
        s = s.to(tl.float32)
    z = tl.load(z_ptrs, mask=s_ok, other=0).to(tl.float32) if HAS_ZERO else s
    if GROUP % BLOCK_K == 0:  # (an else, not an early return: Triton compiles what follows a return)
        return (values - z) * s if HAS_ZERO else values * s
    else:
        return scaled_groups(values, s, z, BLOCK_N, BLOCK_K, GROUP, HAS_ZERO)


def check_four_bit_weight(packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None, *, k: int,
                          k_from: str, group: int, codes: str) -> None:
    """Refuse, by name, a 4-bit weight of K = ``k`` (the size of tensor ``k_from``) that the
    kernels cannot read: see ``w4a16_matmul`` for the contract."""
    if codes not in CODES:
        raise ValueError(f"codes: expected one of {CODES}, got {codes!r}")
    if group not in GROUPS:
        raise ValueError(f"group: expected one of {GROUPS}, got {group!r}")
    if k % group:
        raise ValueError(f"{k_from}: K={k} is not a whole number of {group}-wide scale groups")
    check_tensor("packed", packed, shape=(None, k // 2), dtypes=(torch.uint8,), last_dim_contiguous=True)
    n = packed.shape[0]
    check_tensor("scales", scales, shape=(n, k // group), dtypes=SCALE_DTYPES)
    if zero_points is not None:
        if codes != "uint4":
            raise ValueError(f"zero_points: only uint4 codes take zero points, not {codes}")
        check_tensor("zero_points", zero_points, shape=(n, k // group), dtypes=ZERO_POINT_DTYPES)
    for name, t in (("scales", scales), ("zero_points", zero_points)):
        if t is not None and t.device != packed.device:
            raise ValueError(f"{name}: on {t.device}, packed on {packed.device}")


def launch_operands(scales: torch.Tensor, zero_points: torch.Tensor | None) -> dict:
    """The scale and zero-point arguments both kernels take (zero points: never read without
    HAS_ZERO, so the scales stand in)."""
    zeros = zero_points if zero_points is not None else scales
    return dict(stride_sn=scales.stride(0), stride_sk=scales.stride(1), stride_zn=zeros.stride(0),
                stride_zk=zeros.stride(1), HAS_ZERO=zero_points is not None, SCALE_E4M3=scales.dtype == torch.uint8)
