"""W8A16 dequant-GEMM over FP8 E4M3 weights: out = x @ W^T, W's codes read in place.

``weight`` (N, K) holds one E4M3 code per element (float8_e4m3fn or its uint8 bytes). Its
scales are fp32, one per row and K group of ``group`` (block FP8 1 x B; MXFP8's E8M0 exponents
converted once to their exact fp32 powers of two), or one per row (``group=None``: per-tensor
FP8, each merged shard's scale repeated over its rows). Each program reads a (BLOCK_N, BLOCK_K)
weight tile and multiplies on tensor cores with fp32 accumulation:

- decode-sized tiles (16 rows) where one scale per row covers the tile (per row, or groups of
  BLOCK_K or more): the codes go into an fp16 dot as they are (one hardware conversion per pair
  of codes on sm_89+, bit moves before: 3 instructions a pair by inline PTX, half the
  instructions a weight byte of Triton's elementwise ones) and the scales multiply the dot's fp32 result: no
  weight is rounded, and fp16 / bf16 activations meet them in fp16 (exact; a row past fp16's
  range is scaled by a power of two);
- otherwise (groups inside the tile: MXFP8's 32, 1x32 / 1x64 blocks; larger tiles; fp32
  activations) the tile is decoded to fp32, scaled as breccia's dequantize scales it, rounded to
  the activation dtype and accumulated in place.

Activations are not quantized: no pass before the GEMM, which is what decode-sized batches
(M <= 16, one pass over the weight) want. K is split across programs when there are too few
output tiles (``tiling.py``).

No host synchronisation and no branch on tensor values: a launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..attention.fp8_codec import e4m3_as_fp16, e4m3_decode, e4m3_fp16_undo
from ..fp16_operands import fp16_operand
from ..launch import check_tensor, native_fp8_decode, ptx_decode
from .tiling import (TileConfig, even_k, k_tile_mask, output_tile, pick_config, scaled_groups, split_k_for,
                     split_k_range, split_output, sum_splits)
from .tuned_configs import tuned_rows

X_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
WEIGHT_DTYPES = (torch.float8_e4m3fn, torch.uint8)


@triton.jit
def w8a16_tile_sum(x_rows, m_ok, weight_rows, scale_rows, n_ok, k_first, k_end, stride_sk,
                   GROUP: tl.constexpr, NATIVE_FP8: tl.constexpr, PTX: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The fp32 (BLOCK_M, BLOCK_N) tile of x @ W^T over K in [k_first, k_end): ``x_rows`` points
    at each activation row (masked by ``m_ok``), ``weight_rows`` (BLOCK_N, 1) and ``scale_rows``
    at each weight row's codes and scales (masked by ``n_ok``). Row pointers, not a row range,
    so the MoE kernel can gather its routed rows and its expert's weight."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(k_first, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + k[None, :], mask=k_tile_mask(m_ok, k, k_end, EVEN_K), other=0.0)
        w_ok = k_tile_mask(n_ok, k, k_end, EVEN_K)
        codes = tl.load(weight_rows + k[None, :], mask=w_ok, other=0)
        if GROUP % BLOCK_K == 0 and x.dtype != tl.float32 and BLOCK_M == 16:
            # Decode-sized tiles where one scale per row covers the tile (one per row overall, or
            # a group of a tile or more): the scale multiplies the dot's fp32 result, not each
            # weight, so the codes go into an fp16 dot as they are (exact, one conversion per
            # pair on sm_89+, 1.5 instructions a code by inline PTX before), with the activations
            # in fp16 (exact, a row past fp16's range scaled by a power of two). Such a launch is one pass over the weight, and issuing
            # its instructions is what bounds it: 10-35% fewer per weight byte than scaling
            # each weight (benchmarks/compile_kernels.py), and no weight is rounded. Larger
            # tiles keep the in-place accumulation below: this one's second accumulator
            # spills there.
            x16, x_unit = fp16_operand(x)
            s = tl.load(scale_rows + (k0 // GROUP) * stride_sk, mask=n_ok, other=0.0) * e4m3_fp16_undo(NATIVE_FP8)
            acc += tl.dot(x16, tl.trans(e4m3_as_fp16(codes, NATIVE_FP8, PTX))) * (x_unit[:, None] * s[None, :])
        else:
            # Groups inside a tile, or fp32 activations (the exact dot): the weights are scaled in
            # fp32, as breccia's dequantize scales them, and rounded to the activation dtype.
            w = e4m3_decode(codes, tl.float32, NATIVE_FP8, PTX)
            if GROUP % BLOCK_K == 0:
                w = w * tl.load(scale_rows + (k0 // GROUP) * stride_sk, mask=n_ok, other=0.0)[:, None]
            elif BLOCK_K % GROUP == 0 and (GROUP & (GROUP - 1)) == 0:
                # Whole groups per tile (MXFP8's 32, 1x32 / 1x64 blocks): one scale per group.
                g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
                s = tl.load(scale_rows[:, None] + g[None, :] * stride_sk,
                            mask=k_tile_mask(n_ok, g * GROUP, k_end, EVEN_K), other=0.0)
                w = scaled_groups(w, s, s, BLOCK_N, BLOCK_K, GROUP, False)
            else:  # any other width: a scale per element (repeated addresses, served from L1)
                w = w * tl.load(scale_rows[:, None] + (k // GROUP)[None, :] * stride_sk, mask=w_ok, other=0.0)
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc, input_precision=DOT_PRECISION)

    return acc


@triton.jit
def _w8a16_kernel(
    x_ptr, weight_ptr, scale_ptr, out_ptr,
    M, N, K, steps_per_split,
    stride_xm, stride_wn, stride_sn, stride_sk, stride_os, stride_om,
    GROUP: tl.constexpr, NATIVE_FP8: tl.constexpr, PTX: tl.constexpr, DOT_PRECISION: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = output_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    split, k_first, k_end = split_k_range(K, steps_per_split, BLOCK_K)  # this program's share of K

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    acc = w8a16_tile_sum(x_ptr + m.to(tl.int64)[:, None] * stride_xm, m_ok,
                         weight_ptr + n.to(tl.int64)[:, None] * stride_wn, scale_ptr + n.to(tl.int64) * stride_sn,
                         n_ok, k_first, k_end, stride_sk, GROUP, NATIVE_FP8, PTX, DOT_PRECISION, EVEN_K, BLOCK_M,
                         BLOCK_N, BLOCK_K)
    out_ptrs = out_ptr + split * stride_os + m.to(tl.int64)[:, None] * stride_om + n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# (largest M, config), smallest M first. Decode (M <= 16) streams the weight once: wide K steps
# and deep pipelines keep loads in flight, and the K split (tiling.py) adds programs. Large M
# reuses each weight tile over many rows: big tiles. A GPU model with a tuned table
# (tuned_configs.py) takes its rows first.
TILE_CONFIGS: list[tuple[int, TileConfig]] = [
    (16, TileConfig(16, 64, 128, 1, 4, 4)),
    (64, TileConfig(32, 64, 128, 4, 4, 3)),
    (256, TileConfig(64, 128, 64, 8, 4, 3)),
    (1 << 62, TileConfig(128, 128, 64, 8, 8, 3)),
]
FP32_CONFIG = TileConfig(32, 64, 32, 4, 8, 2)  # no spills on sm_80-90 (benchmarks/compile_kernels.py)
# K = 64 puts groups 16 / 32 inside a K tile, 64 on one, 128 across two.
INTERPRETER_CONFIG = TileConfig(16, 32, 64, 1, 1, 1)


def choose_config(m: int, x: torch.Tensor) -> TileConfig:
    """The tile config of a launch over M rows of activations ``x``."""
    return pick_config(m, x, TILE_CONFIGS, FP32_CONFIG, INTERPRETER_CONFIG, tuned_rows("w8a16", x))


def w8a16_matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, *, group: int | None) -> torch.Tensor:
    """x @ W^T for an FP8 E4M3 weight W read in place, W = code * scale.

    Parameters
    ----------
    x : (M, K) float16 / bfloat16 / float32, last dimension contiguous.
    weight : (N, K) float8_e4m3fn, or uint8 E4M3 bytes; last dimension contiguous.
    scales : fp32 (N, K / group); with ``group=None`` (N,) or (N, 1), one per row.
    group : K elements per scale (block FP8's 1 x B, MXFP8's 32; any width that divides K), or
        None for one scale per row.

    Returns (M, N) in x's dtype: fp32 accumulation of x times the dequantized weight rounded to
    x's dtype (fp32 x: true fp32 products). E4M3's NaN codes come out NaN, as breccia decodes
    them, compiled on sm_89+ (or with the PTX decode off); Triton's interpreter and the PTX
    decode of sm_80-86 read them as +-480 (breccia never writes them for finite weights).
    """
    scales = checked_operands(x, weight, scales, group, stacked=False)
    m, k, n = x.shape[0], x.shape[1], weight.shape[0]
    if m == 0 or n == 0:
        return x.new_empty((m, n))

    config = choose_config(m, x)
    split = split_k_for(m, n, k, config, x.device)
    out, partials = split_output(x, n, split)
    # One scale per row: every K tile reads the row's scale (GROUP = BLOCK_K, stride 0 along K).
    group_size, scale_k_stride = (config.block_k, 0) if group is None else (group, scales.stride(1))
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), split.splits)
    _w8a16_kernel[grid](
        x, weight.view(torch.uint8), scales, partials,
        m, n, k, split.steps,
        x.stride(0), weight.stride(0), scales.stride(0), scale_k_stride, m * n, n,
        GROUP=group_size, NATIVE_FP8=native_fp8_decode(x), PTX=ptx_decode(x),
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else None, EVEN_K=even_k(k, config.block_k),
        **config.launch_args(),
    )
    return sum_splits(partials, out)


def checked_operands(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, group: int | None, *,
                     stacked: bool) -> torch.Tensor:
    """Raise, naming the operand, unless x, the weight ((N, K), or (E, N, K) ``stacked``
    experts) and its scales (a column per K group; one per row with ``group=None``) make a
    launch. Returns the scales with their column dimension, (..., N, 1) for one per row."""
    if group is not None and (not isinstance(group, int) or group < 1):
        raise ValueError(f"group: expected a positive number of K elements per scale, or None (one per row), "
                         f"got {group!r}")
    check_tensor("x", x, shape=(None, None), dtypes=X_DTYPES, last_dim_contiguous=True)
    k = x.shape[1]
    if group is not None and k % group:
        raise ValueError(f"x: K={k} is not a whole number of {group}-wide scale groups")
    check_tensor("weight", weight, shape=(None,) * stacked + (None, k), dtypes=WEIGHT_DTYPES, last_dim_contiguous=True)
    rows = weight.shape[:-1]
    if group is None and scales.shape == rows:
        scales = scales[..., None]
    check_tensor("scales", scales, shape=rows + (1 if group is None else k // group,), dtypes=(torch.float32,))
    for name, t in (("weight", weight), ("scales", scales)):
        if t.device != x.device:
            raise ValueError(f"{name}: on {t.device}, x on {x.device}")
    return scales
