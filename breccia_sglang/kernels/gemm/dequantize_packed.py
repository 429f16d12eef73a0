"""4-bit weights (INT4, INT4 with zero points, NVFP4) dequantized in one pass, for prefill-sized
batches: packed codes (N, K / 2), scales and zero points in, (N, K) in the activation dtype out,
then the platform's own dense GEMM.

Why: our W4A16 GEMM (``w4a16.py``) decodes every weight tile once per tile of rows, on the CUDA
cores, beside the tensor cores' work. That is right at decode sizes, where the weight's bytes
are the cost, and wrong at prefill sizes: on an H200 it ran INT4 at 0.15-0.45x BF16 from M = 128,
and NVFP4 (whose bf16 models no SGLang kernel serves before sm_100: FP4 Marlin takes fp16 only)
at 0.11-0.23x (benchmarks/RESULTS.md). Writing the weight once in bf16 (half a byte read and two
written per weight) and handing it to cuBLAS costs BF16's GEMM plus that pass, as the FP8
route does (``dequantize.py``). The written weight lives only until the GEMM returns.

The values are the emulated kernel's, bit for bit: each code's exact value, minus its zero
point, times its scale in fp32 (``four_bit.py``, the W4A16 GEMM's own tile), rounded once.
No host synchronisation and no branch on tensor values: a CUDA graph can capture it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..launch import check_tensor, gpu_tiles, native_fp8_decode
from .dequantize import INTERPRETED, output_of_pass, rounded
from .four_bit import CODES, check_four_bit_weight, launch_operands, scaled_values, unpacked_values
from .tiling import even_k, k_tile_mask

# (rows, K) per program: 4 KiB of packed codes over 4 warps (32 bytes a thread), 16 KiB written
# in 16-bit; every group (16-128) sits whole inside a tile.
GPU_TILE = (32, 256, 4)
INTERPRETER_TILE = (16, 64, 1)  # K 64: groups 16 / 32 inside a tile, 64 on one, 128 across two


@triton.jit
def _dequantize_4bit_kernel(
    packed_ptr, scale_ptr, zero_ptr, out_ptr, N, K, stride_pn, stride_on,
    stride_sn, stride_sk, stride_zn, stride_zk,
    GROUP: tl.constexpr, CODE: tl.constexpr, HAS_ZERO: tl.constexpr, SCALE_E4M3: tl.constexpr,
    NATIVE_FP8: tl.constexpr, BF16_BITS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    n_ok = n < N
    rows = n.to(tl.int64)
    j = k0 // 2 + tl.arange(0, BLOCK_K // 2)  # byte index in the row; element 2j and 2j + 1
    values = unpacked_values(packed_ptr + rows * stride_pn, j, k_tile_mask(n_ok, j, K // 2, EVEN_K), CODE,
                             BLOCK_N, BLOCK_K)
    values = scaled_values(values, scale_ptr + rows * stride_sn, zero_ptr + rows * stride_zn, k0, K, n_ok,
                           stride_sk, stride_zk, GROUP, HAS_ZERO, SCALE_E4M3, NATIVE_FP8, EVEN_K, BLOCK_N, BLOCK_K)
    k = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + rows[:, None] * stride_on + k[None, :], rounded(values, out_ptr.dtype.element_ty, BF16_BITS),
             mask=k_tile_mask(n_ok, k, K, EVEN_K))


def dequantize_4bit(packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None = None, *,
                    group: int, codes: str, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """The 4-bit weight W = (value - z) * s, (N, K) in ``dtype``.

    Parameters
    ----------
    packed, scales, zero_points, group, codes : the 4-bit weight as ``w4a16_matmul`` reads it
        ((N, K / 2) uint8, element 2j of a row in the low nibble of byte j).
    dtype : float16, bfloat16 or float32.
    out : where to write, (N, K) of ``dtype`` with a contiguous last dimension; else a new tensor.
    """
    check_tensor("packed", packed, shape=(None, None), dtypes=(torch.uint8,), last_dim_contiguous=True)
    n, k = packed.shape[0], packed.shape[1] * 2
    check_four_bit_weight(packed, scales, zero_points, k=k, k_from="packed", group=group, codes=codes)
    out = output_of_pass(out, (n, k), dtype, packed, "packed")
    if n == 0 or k == 0:
        return out
    block_n, block_k, warps = GPU_TILE if gpu_tiles(packed) else INTERPRETER_TILE
    _dequantize_4bit_kernel[(triton.cdiv(n, block_n), triton.cdiv(k, block_k))](
        packed, scales, zero_points if zero_points is not None else scales, out, n, k, packed.stride(0), out.stride(0),
        GROUP=group, CODE=CODES.index(codes), NATIVE_FP8=native_fp8_decode(packed), BF16_BITS=INTERPRETED,
        EVEN_K=even_k(k, block_k), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
        **launch_operands(scales, zero_points),
    )
    return out


def dequantized_4bit_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                            zero_points: torch.Tensor | None = None, *, group: int, codes: str) -> torch.Tensor:
    """x @ W^T with the 4-bit W dequantized to x's dtype in one pass (``dequantize_4bit``), then
    the dense GEMM of the platform (cuBLAS on NVIDIA): the emulated kernel's result, at prefill sizes."""
    return F.linear(x, dequantize_4bit(packed, scales, zero_points, group=group, codes=codes, dtype=x.dtype))
