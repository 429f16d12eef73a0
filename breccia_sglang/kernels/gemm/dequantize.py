"""FP8 E4M3 weights dequantized in one pass, for prefill-sized batches: codes (N, K) and fp32
scales in, (N, K) in the activation dtype out, then the platform's own dense GEMM.

Why a pass of its own: at thousands of rows a linear layer is bound by arithmetic, not by its
weight's bytes. A W8A8 kernel with fine scales (MXFP8's 1 x 32, block FP8's 1 x 64) rescales
its fp32 accumulator after every 32 or 64 K, as many multiply-adds on the CUDA cores as the
tensor cores do products, and on an H200 SGLang's Triton block kernel ran those layers at
0.18-0.51x BF16 at M = 2048 (benchmarks/RESULTS.md). Writing the weight once in bf16 (one read
of a byte and one write of two per weight, at memory speed) and handing it to cuBLAS costs the
BF16 GEMM plus that pass, which shrinks as M grows. The written weight lives only until the
GEMM returns; the loaded one stays FP8.

The values are the emulated kernel's, bit for bit: each code decoded exactly, times its fp32
scale (one fp32 rounding, as breccia's dequantize computes it), rounded once to the dtype.
No host synchronisation and no branch on tensor values: a CUDA graph can capture it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..attention.fp8_codec import e4m3_decode
from ..launch import check_tensor, gpu_tiles, native_fp8_decode, ptx_decode
from .tiling import scaled_groups

OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
WEIGHT_DTYPES = (torch.float8_e4m3fn, torch.uint8)
# (rows, K) per program: 8 KiB of codes over 4 warps, 16 bytes per load and 64 in flight per
# thread; every scale group width up to 256 sits inside or on a tile.
GPU_TILE = (32, 256, 4)
INTERPRETER_TILE = (16, 64, 1)  # K 64: groups 16 / 32 inside a tile, 64 on one, 128 across two


@triton.jit
def _dequantize_fp8_kernel(
    weight_ptr, scale_ptr, out_ptr, N, K,
    stride_wn, stride_sn, stride_sk, stride_on,
    GROUP: tl.constexpr, NATIVE_FP8: tl.constexpr, PTX: tl.constexpr, BF16_BITS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    k = k0 + tl.arange(0, BLOCK_K)
    n_ok, k_ok = n < N, k < K
    ok = n_ok[:, None] & k_ok[None, :]
    rows = n.to(tl.int64)
    codes = tl.load(weight_ptr + rows[:, None] * stride_wn + k[None, :], mask=ok, other=0)
    values = e4m3_decode(codes, tl.float32, NATIVE_FP8, PTX)
    scale_rows = scale_ptr + rows * stride_sn
    if GROUP % BLOCK_K == 0:  # one scale per row over the tile (per row overall, or wide groups)
        values = values * tl.load(scale_rows + (k0 // GROUP) * stride_sk, mask=n_ok, other=0.0)[:, None]
    elif BLOCK_K % GROUP == 0 and (GROUP & (GROUP - 1)) == 0:  # whole groups per tile: one load each
        g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        s = tl.load(scale_rows[:, None] + g[None, :] * stride_sk, mask=n_ok[:, None] & (g * GROUP < K)[None, :],
                    other=0.0)
        values = scaled_groups(values, s, s, BLOCK_N, BLOCK_K, GROUP, False)
    else:  # any other width: a scale per element (repeated addresses, served from L1)
        values = values * tl.load(scale_rows[:, None] + (k // GROUP)[None, :] * stride_sk, mask=ok, other=0.0)
    tl.store(out_ptr + rows[:, None] * stride_on + k[None, :], rounded(values, out_ptr.dtype.element_ty, BF16_BITS),
             mask=ok)


@triton.jit
def rounded(values, dtype: tl.constexpr, BF16_BITS: tl.constexpr):
    """fp32 ``values`` rounded to nearest even in ``dtype``. ``BF16_BITS``: round to bf16 with
    integer operations on the bits, not the conversion. Compiled, the conversion rounds to
    nearest even; Triton's interpreter truncates instead (its fp32 -> bf16 path drops the low
    bits), so under it the bits are rounded by hand: add half an ulp of bf16, plus one if the
    kept part is odd (ties to even), and keep the top 16 bits; NaN stays a quiet NaN."""
    if BF16_BITS and dtype == tl.bfloat16:
        bits = values.to(tl.uint32, bitcast=True)
        kept = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        kept = tl.where(values != values, (bits >> 16) | 0x40, kept)
        return kept.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return values.to(dtype)


# Under TRITON_INTERPRET=1 (decided when Triton is imported) the bf16 rounding is done by hand.
INTERPRETED = type(_dequantize_fp8_kernel).__name__ == "InterpretedFunction"


def dequantize_fp8(weight: torch.Tensor, scales: torch.Tensor, *, group: int | None, dtype: torch.dtype,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """The FP8 E4M3 weight W = code * scale, (N, K) in ``dtype``.

    Parameters
    ----------
    weight : (N, K) float8_e4m3fn, or uint8 E4M3 bytes; last dimension contiguous.
    scales : fp32 (N, K / group); with ``group=None`` (N,) or (N, 1), one per row (per-tensor
        FP8: each merged shard's scale over its rows).
    group : K elements per scale (block FP8's 1 x B, MXFP8's 32 with its E8M0 exponents as exact
        fp32; any width that divides K), or None for one scale per row.
    dtype : float16, bfloat16 or float32.
    out : where to write, (N, K) of ``dtype`` with a contiguous last dimension; else a new tensor.

    E4M3's NaN codes (which breccia never writes) come out NaN compiled on a GPU, but +-480 in
    Triton's interpreter and on sm_80-86 by the PTX decode (``fp8_codec.e4m3_fp16_ptx``).
    """
    if group is not None and (not isinstance(group, int) or group < 1):
        raise ValueError(f"group: expected a positive number of K elements per scale, or None (one per row), "
                         f"got {group!r}")
    check_tensor("weight", weight, shape=(None, None), dtypes=WEIGHT_DTYPES, last_dim_contiguous=True)
    n, k = weight.shape
    if group is not None and k % group:
        raise ValueError(f"weight: K={k} is not a whole number of {group}-wide scale groups")
    if group is None:
        scales = scales.reshape(-1, 1) if scales.ndim == 1 else scales
        check_tensor("scales", scales, shape=(n, 1), dtypes=(torch.float32,))
    else:
        check_tensor("scales", scales, shape=(n, k // group), dtypes=(torch.float32,))
    if scales.device != weight.device:
        raise ValueError(f"scales: on {scales.device}, weight on {weight.device}")
    out = output_of_pass(out, (n, k), dtype, weight, "weight")
    if n == 0 or k == 0:
        return out
    block_n, block_k, warps = GPU_TILE if gpu_tiles(weight) else INTERPRETER_TILE
    # One scale per row: every K tile reads the row's scale (GROUP = BLOCK_K, stride 0 along K).
    group_size, scale_k_stride = (block_k, 0) if group is None else (group, scales.stride(1))
    _dequantize_fp8_kernel[(triton.cdiv(n, block_n), triton.cdiv(k, block_k))](
        weight.view(torch.uint8), scales, out, n, k,
        weight.stride(0), scales.stride(0), scale_k_stride, out.stride(0),
        GROUP=group_size, NATIVE_FP8=native_fp8_decode(weight), PTX=ptx_decode(weight),
        BF16_BITS=INTERPRETED,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )
    return out


def output_of_pass(out: torch.Tensor | None, shape: tuple[int, int], dtype: torch.dtype, source: torch.Tensor,
                   source_name: str) -> torch.Tensor:
    """Where a dequantize pass over ``source`` (the codes, named ``source_name`` in errors) writes
    its ``shape`` weight in ``dtype``: ``out``, checked, or a new tensor on source's device."""
    if dtype not in OUT_DTYPES:
        raise TypeError(f"dtype: expected one of {[str(d) for d in OUT_DTYPES]}, got {dtype}")
    if out is None:
        return source.new_empty(shape, dtype=dtype)
    check_tensor("out", out, shape=shape, dtypes=(dtype,), last_dim_contiguous=True)
    if out.device != source.device:
        raise ValueError(f"out: on {out.device}, {source_name} on {source.device}")
    return out


def dequantized_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, *,
                       group: int | None) -> torch.Tensor:
    """x @ W^T with W dequantized to x's dtype in one pass (``dequantize_fp8``), then the dense
    GEMM of the platform (cuBLAS on NVIDIA): the emulated kernel's result, at prefill sizes."""
    return F.linear(x, dequantize_fp8(weight, scales, group=group, dtype=x.dtype))
