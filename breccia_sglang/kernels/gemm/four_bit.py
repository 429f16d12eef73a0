"""A tile of 4-bit weight codes, packed two per byte, as its scaled fp32 values: what the W4A16
GEMM (``w4a16.py``) multiplies and the one-pass dequantize (``dequantize_packed.py``) writes out,
and the operand contract both check.

``packed`` (N, K / 2) uint8 holds element 2j of a row in the LOW nibble of byte j and 2j + 1 in
the high one (``weights.packing.pack_low_first``). A tile's values are computed as breccia's
dequantize computes them: each code's exact value, minus its zero point, times its scale, in
fp32 (one scale and zero point loaded per group, ``tiling.scaled_groups``). The W4A16 GEMM's
faster tile dots take the codes as exact 16-bit values instead: INT4 / UINT4 integers
(``integer_nibbles``) and NVFP4 values times their scales (``scaled_e2m1``), by inline PTX on
NVIDIA GPUs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..attention.fp8_codec import e4m3_decode
from ..launch import check_tensor
from .tiling import k_tile_mask, scaled_groups

CODES = ("int4", "uint4", "e2m1")  # two's complement, unsigned 0..15 (zero points allowed), FP4 E2M1
GROUPS = (16, 32, 64, 128)  # K elements per scale: 16 for NVFP4 (e2m1), 32 / 64 / 128 for INT4
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)  # uint8: E4M3 codes
ZERO_POINT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _both_halves(bits: int) -> str:
    """A 32-bit PTX immediate holding the 16-bit ``bits`` in both halves."""
    return f"0x{bits:04x}{bits:04x}"


def nibbles_ptx(*, signed: bool, bf16: bool) -> str:
    """Inline PTX (sm_80+) that turns 4 bytes of INT4 (``signed``) or UINT4 codes into their 8
    integer values in bf16 or fp16, two per instruction, as Marlin does: each nibble is OR-ed
    into the mantissa of a "magic" number M (128 in bf16, 1024 in fp16, whose unit in the last
    place is 1), so the pair reads M + u, and one fused multiply-add takes M back off. INT4's
    two's complement nibble c is first made u = c + 8 (XOR with 8), and 8 more comes off.

    For ``tl.inline_asm_elementwise(..., pack=4)``: $4 holds four code bytes, element i in byte
    i; $0 / $1 get the low nibbles of elements 0, 1 / 2, 3 (element i in the low half first),
    $2 / $3 their high nibbles. Each output depends only on its own byte, as elementwise asm
    must. ``tests/kernels/test_w4a16_ptx.py`` runs this text over all 256 bytes."""
    magic, one = (0x4300, 0x3F80) if bf16 else (0x6400, 0x3C00)
    # -(M + 8) or -M as a 16-bit float: M's bits with the sign set, and 8 added in the mantissa
    # (exact: M's unit in the last place is 1)
    bias = 0x8000 | magic | (8 if signed else 0)
    kind = "bf16x2" if bf16 else "f16x2"
    return "\n".join([
        "{",
        ".reg .b32 w, lo, hi, one, bias;",
        f"mov.b32 one, {_both_halves(one)};",
        f"mov.b32 bias, {_both_halves(bias)};",
        f"xor.b32 w, $4, {'0x88888888' if signed else '0x0'};",
        "prmt.b32 lo, w, 0, 0x4140;",  # bytes 0, 1 to the low bytes of the two halves
        "prmt.b32 hi, w, 0, 0x4342;",  # bytes 2, 3 likewise
        f"lop3.b32 $0, lo, 0x000f000f, {_both_halves(magic)}, 0xea;",  # (a & b) | c
        f"lop3.b32 $1, hi, 0x000f000f, {_both_halves(magic)}, 0xea;",
        "shr.u32 lo, lo, 4;",
        "shr.u32 hi, hi, 4;",
        f"lop3.b32 $2, lo, 0x000f000f, {_both_halves(magic)}, 0xea;",
        f"lop3.b32 $3, hi, 0x000f000f, {_both_halves(magic)}, 0xea;",
        *(f"fma.rn.{kind} ${r}, ${r}, one, bias;" for r in range(4)),
        "}",
    ])


# scaled_e2m1 gives each product over 2^E2M1_PRODUCT_SHIFT: E2M1's bits placed in a bf16 / fp16
# read as the value times 2^-126 / 2^-14, so the scale operand must carry 2^126 / 2^14, and
# 448 (E4M3's largest) times that overflows both formats; 2^-8 of it fits both (448 * 2^118 <
# 2^128, 448 * 2^6 < 65504), and every product, 2^-18 .. 10.5, stays exact there.
E2M1_PRODUCT_SHIFT = 8
E2M1_PRODUCT_SCALE = tl.constexpr(2.0**E2M1_PRODUCT_SHIFT)  # what a dot over those products is multiplied by


def e2m1_operand_factor(*, bf16: bool) -> float:
    """What ``e2m1_scale_operand`` multiplies a scale by for ``e2m1_ptx``: 2^(126 - 8) in bf16,
    2^(14 - 8) in fp16."""
    return 2.0 ** ((126 if bf16 else 14) - E2M1_PRODUCT_SHIFT)


_BF16_OPERAND = tl.constexpr(e2m1_operand_factor(bf16=True))
_FP16_OPERAND = tl.constexpr(e2m1_operand_factor(bf16=False))
# and what takes an operand back to the scale over 2^8 (elementwise, off the GPU)
_BF16_UNDO = tl.constexpr(2.0**-E2M1_PRODUCT_SHIFT / e2m1_operand_factor(bf16=True))
_FP16_UNDO = tl.constexpr(2.0**-E2M1_PRODUCT_SHIFT / e2m1_operand_factor(bf16=False))


def e2m1_ptx(*, bf16: bool) -> str:
    """Inline PTX (sm_80+) that turns 4 bytes of FP4 E2M1 codes into their 8 values times a scale
    per byte, over 2^E2M1_PRODUCT_SHIFT, in bf16 or fp16: 4 instructions per two values in bf16, 5
    in fp16, and two masks per four bytes (33 per four bytes before, with a byte table).

    A code's sign goes to the 16-bit float's sign bit, and its 2 exponent and 1 mantissa bits to
    the float's 2 lowest exponent bits and top mantissa bit. The float then reads as the code's
    value times 2^-126 (bf16) or 2^-14 (fp16), E2M1's subnormal 0.5 included (on a bf16 / fp16
    subnormal, which fma keeps: PTX gives bf16 no flush to zero, and f16 flushes only with
    .ftz). One multiply-add by the scale operand (``e2m1_scale_operand``: the scale times
    2^(126 - 8) or 2^(14 - 8)), plus -0, gives the product over 2^8, exact, as E2M1 times E4M3
    needs 6 significant bits.

    Each pair comes from a word holding just its two nibbles, one in each half at the same place
    (a mask, then ``prmt``), so one shift moves both halves. Where the sign's and the magnitude's
    shifted copies do not overlap (bf16), one multiply by the sum of the two powers of two makes
    both copies; fp16's overlap, and take two shifts and a ``lop3``.

    For ``tl.inline_asm_elementwise(..., pack=4)``: $4 holds four code bytes (element i in byte
    i), $5 / $6 the scale operands of elements 0, 1 / 2, 3 (16-bit, element 0 in the low half);
    $0 / $1 get the low nibbles' products of elements 0, 1 / 2, 3, $2 / $3 the high nibbles'."""
    magnitude_at = 6 if bf16 else 9  # the bit the magnitude's 3 bits start at: the float's top mantissa bit
    keep = _both_halves(0x8000 | 7 << magnitude_at)  # sign and magnitude, in both halves
    kind = "bf16x2" if bf16 else "f16x2"
    lines = [
        "{",
        ".reg .b32 low_nibbles, high_nibbles, pair, shifted, minus_zero;",
        "and.b32 low_nibbles, $4, 0x0f0f0f0f;",
        "and.b32 high_nibbles, $4, 0xf0f0f0f0;",
        "mov.b32 minus_zero, 0x80008000;",  # (+0 would turn a -0 product into +0)
    ]
    # (output, its nibbles, the prmt selector that takes bytes 0, 1 or 2, 3 to the low bytes of
    # the two halves, the nibble's first bit in its byte, the scale operands)
    for out, nibbles, selector, nibble_at, scale in (
            ("$0", "low_nibbles", "0x4140", 0, "$5"), ("$1", "low_nibbles", "0x4342", 0, "$6"),
            ("$2", "high_nibbles", "0x4140", 4, "$5"), ("$3", "high_nibbles", "0x4342", 4, "$6")):
        magnitude_shift, sign_shift = magnitude_at - nibble_at, 15 - (nibble_at + 3)
        lines.append(f"prmt.b32 pair, {nibbles}, 0, {selector};")
        if magnitude_at + 4 <= 12:  # the copies, at magnitude_at .. +3 and 12 .. 15, are disjoint: a sum is an OR
            lines += [f"mul.lo.u32 pair, pair, {(1 << magnitude_shift) + (1 << sign_shift)};",
                      f"and.b32 pair, pair, {keep};"]
        else:
            lines += [f"shl.b32 shifted, pair, {magnitude_shift};",
                      f"shl.b32 pair, pair, {sign_shift};",
                      # (a | b) & c: where c keeps a bit, the other copy holds a zero there
                      f"lop3.b32 pair, shifted, pair, {keep}, 0xa8;"]
        lines.append(f"fma.rn.{kind} {out}, pair, {scale}, minus_zero;")
    return "\n".join(lines + ["}"])


E2M1_BF16_PTX = tl.constexpr(e2m1_ptx(bf16=True))
E2M1_FP16_PTX = tl.constexpr(e2m1_ptx(bf16=False))
INT4_BF16_PTX = tl.constexpr(nibbles_ptx(signed=True, bf16=True))
UINT4_BF16_PTX = tl.constexpr(nibbles_ptx(signed=False, bf16=True))
INT4_FP16_PTX = tl.constexpr(nibbles_ptx(signed=True, bf16=False))
UINT4_FP16_PTX = tl.constexpr(nibbles_ptx(signed=False, bf16=False))


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
def _run_ptx(args, ASM: tl.constexpr, CONSTRAINTS: tl.constexpr, BF16: tl.constexpr):
    """(low nibbles, high nibbles) from 4-bit PTX over ``args``, four bytes a call."""
    if BF16:  # (the dtypes written out: a constexpr dtype inside a tuple does not lower)
        return tl.inline_asm_elementwise(ASM, CONSTRAINTS, args, dtype=(tl.bfloat16, tl.bfloat16), is_pure=True,
                                         pack=4)
    else:
        return tl.inline_asm_elementwise(ASM, CONSTRAINTS, args, dtype=(tl.float16, tl.float16), is_pure=True,
                                         pack=4)


@triton.jit
def integer_nibbles(c, CODE: tl.constexpr, DTYPE: tl.constexpr, PTX: tl.constexpr):
    """(low nibbles, high nibbles) of uint8 codes ``c``, INT4 (CODE 0) or UINT4 (1), as their
    integer values in DTYPE (fp16 or bf16, where -8..15 are exact): by inline PTX, two values an
    instruction, where the kernel is compiled for an NVIDIA GPU (``PTX``), else elementwise."""
    if PTX:
        if DTYPE == tl.bfloat16:
            return _run_ptx([c], INT4_BF16_PTX if CODE == 0 else UINT4_BF16_PTX, "=r,=r,=r,=r,r", True)
        else:
            return _run_ptx([c], INT4_FP16_PTX if CODE == 0 else UINT4_FP16_PTX, "=r,=r,=r,=r,r", False)
    else:
        wide = c.to(tl.int32)
        return nibble_values(wide & 15, CODE).to(DTYPE), nibble_values(wide >> 4, CODE).to(DTYPE)


@triton.jit
def e2m1_scale_operand(s, DTYPE: tl.constexpr):
    """fp32 E4M3 scale values -> the scale operands ``scaled_e2m1`` takes in DTYPE (fp16 or
    bf16): s * 2^(126 - 8) or s * 2^(14 - 8), exact (see ``E2M1_PRODUCT_SHIFT``)."""
    return (s * (_BF16_OPERAND if DTYPE == tl.bfloat16 else _FP16_OPERAND)).to(DTYPE)


@triton.jit
def scaled_e2m1(c, s, DTYPE: tl.constexpr, PTX: tl.constexpr):
    """(low nibbles, high nibbles) of uint8 E2M1 codes ``c`` times their bytes' scales, over
    2^E2M1_PRODUCT_SHIFT, in DTYPE (fp16 or bf16, where every such product of an E4M3 scale is
    exact). ``s``: the bytes' scale operands (``e2m1_scale_operand``). By inline PTX where the
    kernel is compiled for an NVIDIA GPU (``PTX``), else elementwise in fp32."""
    if PTX:
        if DTYPE == tl.bfloat16:
            return _run_ptx([c, s], E2M1_BF16_PTX, "=r,=r,=r,=r,r,r,r", True)
        else:
            return _run_ptx([c, s], E2M1_FP16_PTX, "=r,=r,=r,=r,r,r,r", False)
    else:
        # the operand back to the scale over 2^8: exact, and a normal fp32 number (2^-17 .. 1.75)
        scale = s.to(tl.float32) * (_BF16_UNDO if DTYPE == tl.bfloat16 else _FP16_UNDO)
        wide = c.to(tl.int32)
        return (nibble_values(wide & 15, 2) * scale).to(DTYPE), (nibble_values(wide >> 4, 2) * scale).to(DTYPE)


@triton.jit
def load_scales(ptrs, mask, SCALE_E4M3: tl.constexpr, NATIVE_FP8: tl.constexpr):
    """The fp32 scales at ``ptrs``: E4M3 bytes (``SCALE_E4M3``) decoded, floats widened."""
    s = tl.load(ptrs, mask=mask, other=0)
    return e4m3_decode(s, tl.float32, NATIVE_FP8) if SCALE_E4M3 else s.to(tl.float32)


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
                  EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
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
        s_ok = k_tile_mask(n_ok, g * GROUP, k_end, EVEN_K)
    s = load_scales(s_ptrs, s_ok, SCALE_E4M3, NATIVE_FP8)
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
