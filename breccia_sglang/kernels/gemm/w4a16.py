"""W4A16 dequant-GEMM: out = x @ W^T, with W's 4-bit codes read in place, two per byte.

``packed`` (N, K / 2) uint8 holds element 2j of a row in the LOW nibble of byte j and 2j + 1
in the high one (``weights.packing.pack_low_first``). Each program loads a (BLOCK_N, BLOCK_K / 2)
tile of bytes with vector loads and meets the activations on tensor cores, fp32 accumulation, in
one of three ways (``TILE_DOTS``):
- INT4 / UINT4 with one scale per row over the K tile (groups of 128 with K tiles of 64 or 128,
  up to 64 rows a tile): the codes' integer values go into the dot as they are, exact in fp16 /
  bf16, and the scale (and zero point) meets the dot's fp32 result;
- NVFP4 (E2M1 codes, E4M3 scales): each value times its scale (over 2^8, made up after the K loop)
  in the activation dtype, where the product is exact;
- otherwise each value is scaled in fp32 as breccia's dequantize does (``(value - z) * s``) and
  rounded to the activation dtype.
Compiled for an NVIDIA GPU, the first two decode their codes in inline PTX, a few instructions
per two values (``four_bit.py``, tested by an emulator of its instructions), and take K in an
order of their own (``_low_then_high``): neither rounds a weight.

K is split across programs when there are too few output tiles (``tiling.py``). No host
synchronisation and no branch on tensor values: a launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import check_tensor, native_fp8_decode, ptx_decode
from .four_bit import (CODES, E2M1_PRODUCT_SCALE, check_four_bit_weight, e2m1_scale_operand, integer_nibbles,
                       launch_operands, load_scales, scaled_e2m1, scaled_values, unpacked_values)
from .tiling import (TileConfig, even_k, k_tile_mask, output_tile, pick_config, split_k_for, split_k_range,
                     split_output, sum_splits)
from .tuned_configs import tuned_rows

X_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _low_then_high(low, high, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """A weight tile from its bytes' low and high nibbles (ROWS, BLOCK_K / 2 each), with K in
    ``_even_then_odd`` order: a dot sums over K in any order, and this is the order the nibbles
    come out of their bytes in, so the weight's registers need no shuffle into K order (x, the
    smaller operand at decode sizes, takes it instead)."""
    return tl.reshape(tl.permute(tl.join(low, high), (0, 2, 1)), (ROWS, BLOCK_K))


@triton.jit
def _even_then_odd(x, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """A (ROWS, BLOCK_K) tile with its even columns first, then its odd ones."""
    even, odd = tl.split(tl.reshape(x, (ROWS, BLOCK_K // 2, 2)))
    return _low_then_high(even, odd, ROWS, BLOCK_K)


@triton.jit
def _scaled_fp4_tile_dot(acc, x, byte_rows, j, j_ok, scale_rows, k0, k_end, n_ok, stride_sk, NATIVE_FP8: tl.constexpr,
                         PTX: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """acc + x @ W^T / 2^E2M1_PRODUCT_SHIFT over a K tile of NVFP4: E2M1 codes times their E4M3
    scales (one per 16) over 2^8, computed in x's dtype (fp16 / bf16), where each product is
    exact, as fp32 gives it and as breccia rounds it; two values in 4-5 instructions by inline PTX
    on a GPU. The kernel multiplies the sum by 2^8 once, after its K loop. Both operands
    hold K in ``_even_then_odd`` order."""
    c = tl.load(byte_rows[:, None] + j[None, :], mask=j_ok, other=0)
    g = k0 // 16 + tl.arange(0, BLOCK_K // 16)
    s = load_scales(scale_rows[:, None] + g[None, :] * stride_sk, k_tile_mask(n_ok, g * 16, k_end, EVEN_K), True,
                    NATIVE_FP8)
    s = e2m1_scale_operand(s, x.dtype)
    byte_scales = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_N, BLOCK_K // 16, 8)), (BLOCK_N, BLOCK_K // 2))
    low, high = scaled_e2m1(c, byte_scales, x.dtype, PTX)
    return tl.dot(_even_then_odd(x, BLOCK_M, BLOCK_K), tl.trans(_low_then_high(low, high, BLOCK_N, BLOCK_K)), acc)


@triton.jit
def _integer_tile_dot(acc, x, byte_rows, j, j_ok, scale_rows, zero_rows, g, n_ok, stride_sk, stride_zk,
                      CODE: tl.constexpr, HAS_ZERO: tl.constexpr, SCALE_E4M3: tl.constexpr, NATIVE_FP8: tl.constexpr,
                      PTX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + x @ W^T over a K tile of INT4 / UINT4 codes under one scale (and zero point) per row,
    group ``g``: the codes' integer values u, exact in x's dtype, go into the dot unscaled, and
    the scale meets its fp32 result, (x.u - z * sum(x)) * s. No weight is rounded, and the
    per-element work is the nibbles' decode alone.

    Both operands hold K in ``_even_then_odd`` order."""
    low, high = integer_nibbles(tl.load(byte_rows[:, None] + j[None, :], mask=j_ok, other=0), CODE, x.dtype, PTX)
    part = tl.dot(_even_then_odd(x, BLOCK_M, BLOCK_K), tl.trans(_low_then_high(low, high, BLOCK_N, BLOCK_K)))
    s = load_scales(scale_rows + g * stride_sk, n_ok, SCALE_E4M3, NATIVE_FP8)
    if HAS_ZERO:
        z = tl.load(zero_rows + g * stride_zk, mask=n_ok, other=0).to(tl.float32)
        part -= tl.sum(x.to(tl.float32), axis=1)[:, None] * z[None, :]
    return acc + part * s[None, :]


@triton.jit
def w4a16_tile_sum(x_rows, m_ok, byte_rows, scale_rows, zero_rows, n_ok, k_first, k_end, stride_sk, stride_zk,
                   GROUP: tl.constexpr, CODE: tl.constexpr, NATIVE_FP8: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   HAS_ZERO: tl.constexpr, SCALE_E4M3: tl.constexpr, TILE_DOT: tl.constexpr, PTX: tl.constexpr,
                   EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The fp32 (BLOCK_M, BLOCK_N) tile of x @ W^T over K in [k_first, k_end): ``x_rows`` points
    at each activation row (masked by ``m_ok``), ``byte_rows`` / ``scale_rows`` / ``zero_rows`` at
    each weight row's codes, scales and zero points (masked by ``n_ok``). Taking row pointers,
    not a row range, lets the MoE kernel gather its routed rows and its expert's weight."""
    HALF_K: tl.constexpr = BLOCK_K // 2
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(k_first, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + k[None, :], mask=k_tile_mask(m_ok, k, k_end, EVEN_K), other=0.0)
        j = k0 // 2 + tl.arange(0, HALF_K)  # byte index in the row; element 2j and 2j + 1
        j_ok = k_tile_mask(n_ok, j, k_end // 2, EVEN_K)
        if TILE_DOT == 1:
            acc = _integer_tile_dot(acc, x, byte_rows, j, j_ok, scale_rows, zero_rows, k0 // GROUP, n_ok, stride_sk,
                                    stride_zk, CODE, HAS_ZERO, SCALE_E4M3, NATIVE_FP8, PTX, BLOCK_M, BLOCK_N, BLOCK_K)
        elif TILE_DOT == 2:
            acc = _scaled_fp4_tile_dot(acc, x, byte_rows, j, j_ok, scale_rows, k0, k_end, n_ok, stride_sk, NATIVE_FP8,
                                       PTX, EVEN_K, BLOCK_M, BLOCK_N, BLOCK_K)
        else:
            values = unpacked_values(byte_rows, j, j_ok, CODE, BLOCK_N, BLOCK_K)
            w = scaled_values(values, scale_rows, zero_rows, k0, k_end, n_ok, stride_sk, stride_zk, GROUP, HAS_ZERO,
                              SCALE_E4M3, NATIVE_FP8, EVEN_K, BLOCK_N, BLOCK_K).to(x.dtype)
            acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if TILE_DOT == 2:  # the fp4 tile dot sums products over 2^E2M1_PRODUCT_SHIFT (four_bit.py)
        acc *= E2M1_PRODUCT_SCALE
    return acc


@triton.jit
def _w4a16_kernel(
    x_ptr, packed_ptr, scale_ptr, zero_ptr, out_ptr,
    M, N, K, steps_per_split, stride_xm, stride_pn, stride_os, stride_om,
    stride_sn, stride_sk, stride_zn, stride_zk,
    GROUP: tl.constexpr, CODE: tl.constexpr, NATIVE_FP8: tl.constexpr, DOT_PRECISION: tl.constexpr,
    HAS_ZERO: tl.constexpr, SCALE_E4M3: tl.constexpr, TILE_DOT: tl.constexpr, PTX: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = output_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    split, k_first, k_end = split_k_range(K, steps_per_split, BLOCK_K)  # this program's share of K

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    acc = w4a16_tile_sum(x_ptr + m.to(tl.int64)[:, None] * stride_xm, m_ok, packed_ptr + n.to(tl.int64) * stride_pn,
                         scale_ptr + n.to(tl.int64) * stride_sn, zero_ptr + n.to(tl.int64) * stride_zn, n_ok,
                         k_first, k_end, stride_sk, stride_zk, GROUP, CODE, NATIVE_FP8, DOT_PRECISION, HAS_ZERO,
                         SCALE_E4M3, TILE_DOT, PTX, EVEN_K, BLOCK_M, BLOCK_N, BLOCK_K)
    out_ptrs = out_ptr + split * stride_os + m.to(tl.int64)[:, None] * stride_om + n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# (largest M, config), smallest M first; a launch takes the first whose M bound it fits. Decode
# (M <= 16) streams the weight once, and the K split (tiling.py) makes enough programs. Each warp
# of a program reads the whole activation tile, so few warps over wide N tiles spend the fewest
# instructions per weight byte (benchmarks/compile_kernels.py, sm_90, bf16, when chosen: INT4 g128
# 6.8 at 16 x 64 x 128 on 2 warps against 11.6 at 16 x 32 x 128 on 4; NVFP4 12.9 against 18.9).
# Large M reuses each weight tile over many rows: big tiles. A GPU model with a tuned table
# (tuned_configs.py) takes its rows first.
TILE_CONFIGS: list[tuple[int, TileConfig]] = [
    (16, TileConfig(16, 64, 128, 1, 2, 4)),
    (64, TileConfig(32, 128, 128, 4, 4, 3)),
    (256, TileConfig(64, 128, 64, 8, 4, 3)),
    (1 << 62, TileConfig(128, 128, 64, 8, 8, 3)),
]
# fp32 activations take the exact ("ieee") dot on FMA units, tiles held in registers: the
# configs above spill 0.2-11 KB per thread there, this one none (benchmarks/compile_kernels.py).
FP32_CONFIG = TileConfig(32, 64, 32, 4, 8, 2)
# Under the interpreter every program runs in Python: small tiles (tl.dot takes 16 per dimension
# at least). K = 64 puts groups 16 / 32 inside a K tile, 64 on one, 128 across two.
INTERPRETER_CONFIG = TileConfig(16, 32, 64, 1, 1, 1)


# How a K tile meets the dot (the kernel's TILE_DOT is the index). fp32 activations always take
# "scaled": the exact FMA dot, on the weight scaled in fp32.
TILE_DOTS = (
    "scaled",  # every code kind: each value scaled in fp32, rounded to x's dtype
    "integer",  # INT4 / UINT4, one scale per row per K tile (tiles of 64 rows at most): integer values,
    #            the scale after the dot
    "fp4",  # NVFP4 (E2M1, E4M3 scale bytes): value times scale in x's dtype, exact there
)


def tile_dot(codes: str, group: int, scales: torch.Tensor, config: TileConfig, x: torch.Tensor) -> str:
    """Which of ``TILE_DOTS`` a launch takes. Both of the fast ones give each product exactly
    (none rounds a weight) and decode two values an instruction with PTX on a GPU."""
    if x.dtype == torch.float32:
        return "scaled"
    if codes == "e2m1":
        return "fp4" if scales.dtype == torch.uint8 else "scaled"
    # Its dot's result is a second fp32 tile beside the accumulator: past 64 rows (the 128 x 128
    # tiles of large M) that spilled 400 B a thread on sm_90 for UINT4, and cost more
    # instructions a byte than the scaled tile there (compile_kernels.py).
    return "integer" if group % config.block_k == 0 and config.block_m <= 64 else "scaled"


def choose_config(m: int, x: torch.Tensor, codes: str) -> TileConfig:
    """The tile config of a launch over M rows of activations ``x`` and 4-bit ``codes``."""
    table = "w4a16-nvfp4" if codes == "e2m1" else "w4a16-int4"  # NVFP4 also decodes a scale per 16
    return pick_config(m, x, TILE_CONFIGS, FP32_CONFIG, INTERPRETER_CONFIG, tuned_rows(table, x))


def w4a16_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                 zero_points: torch.Tensor | None = None, *, group: int, codes: str) -> torch.Tensor:
    """x @ W^T for a 4-bit weight W read in place, two codes per byte.

    Parameters
    ----------
    x : (M, K) float16 / bfloat16 / float32, last dimension contiguous.
    packed : (N, K / 2) uint8, element 2j of a row in the low nibble of byte j.
    scales : (N, K / group) float32 / float16 / bfloat16, or uint8 E4M3 codes (NVFP4).
    zero_points : (N, K / group) float (integer-valued), ``codes="uint4"`` only: W = (u - z) * s.
    group : K elements per scale, one of ``four_bit.GROUPS``.
    codes : "int4" (two's complement), "uint4" (0..15) or "e2m1" (FP4), see ``weights.codes``.

    Returns (M, N) in x's dtype: fp32 accumulation of x times the dequantized weight rounded to
    x's dtype (fp32 x: true fp32 products).
    """
    check_tensor("x", x, shape=(None, None), dtypes=X_DTYPES, last_dim_contiguous=True)
    m, k = x.shape
    check_four_bit_weight(packed, scales, zero_points, k=k, k_from="x", group=group, codes=codes)
    n = packed.shape[0]
    if packed.device != x.device:
        raise ValueError(f"packed: on {packed.device}, x on {x.device}")
    if m == 0 or n == 0:
        return x.new_empty((m, n))

    config = choose_config(m, x, codes)
    split = split_k_for(m, n, k, config, x.device)
    out, partials = split_output(x, n, split)
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), split.splits)
    _w4a16_kernel[grid](
        x, packed, scales, zero_points if zero_points is not None else scales, partials,
        m, n, k, split.steps, x.stride(0), packed.stride(0), m * n, n,
        GROUP=group, CODE=CODES.index(codes), NATIVE_FP8=native_fp8_decode(x),
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else None,
        TILE_DOT=TILE_DOTS.index(tile_dot(codes, group, scales, config, x)), PTX=ptx_decode(x),
        EVEN_K=even_k(k, config.block_k),
        **launch_operands(scales, zero_points), **config.launch_args(),
    )
    return sum_splits(partials, out)
