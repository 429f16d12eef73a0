"""W4A16 for mixture-of-experts layers: each routed (token, expert) pair times that expert's 4-bit
weight, the codes read in place from the stacked (E, N, K / 2) experts.

The pairs come grouped by expert in blocks (``routed_blocks.py``, SGLang's align layout); a
program computes one (BLOCK_M pairs, BLOCK_N outputs) tile through the dense kernel's K loop
(``w4a16.w4a16_tile_sum``), reading its expert's codes, scales and zero points. Every tile dot
of the dense kernel is here, PTX decode included.

SGLang's own W4A16 MoE kernel (``fused_moe_kernel_gptq_awq``) reads every packed byte twice,
through ``offs_k // 2`` addressing, and measured 0.05-0.1x BF16 on an H200 (RESULTS.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import check_tensor, native_fp8_decode
from .four_bit import CODES, check_four_bit_weight, launch_operands
from .routed_blocks import (RoutedBlocks, check_routed_call, choose_routed_config, routed_grid, routed_rows,
                            store_routed)
from .tiling import TileConfig, even_k, output_tile
from .w4a16 import FP32_CONFIG, TILE_CONFIGS, TILE_DOTS, X_DTYPES, ptx_decode, tile_dot, w4a16_tile_sum

@triton.jit
def _moe_w4a16_kernel(
    x_ptr, packed_ptr, scale_ptr, zero_ptr, out_ptr, routed_ptr, pairs_ptr, experts_ptr, padded_ptr,
    num_pairs, N, K, capacity, stride_xm, stride_pe, stride_pn, stride_om,
    stride_se, stride_sn, stride_sk, stride_ze, stride_zn, stride_zk,
    PAIRS_PER_X_ROW: tl.constexpr, MUL_ROUTED: tl.constexpr,
    GROUP: tl.constexpr, CODE: tl.constexpr, NATIVE_FP8: tl.constexpr, DOT_PRECISION: tl.constexpr,
    HAS_ZERO: tl.constexpr, SCALE_E4M3: tl.constexpr, TILE_DOT: tl.constexpr, PTX: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = output_tile(tl.program_id(0), capacity, N, BLOCK_M, BLOCK_N, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(padded_ptr):  # past the real blocks: this call routed fewer pairs
        return
    expert, pair, n, m_ok, n_ok = routed_rows(pid_m, pid_n, pairs_ptr, experts_ptr, num_pairs, N, BLOCK_M, BLOCK_N)
    if expert < 0:  # pairs of another rank's experts (expert parallelism): they add nothing
        store_routed(tl.zeros((BLOCK_M, BLOCK_N), tl.float32), out_ptr, routed_ptr, pair, n, m_ok, n_ok, stride_om,
                     False)
        return
    n64 = n.to(tl.int64)
    acc = w4a16_tile_sum(x_ptr + (pair // PAIRS_PER_X_ROW).to(tl.int64)[:, None] * stride_xm, m_ok,
                         packed_ptr + expert * stride_pe + n64 * stride_pn,
                         scale_ptr + expert * stride_se + n64 * stride_sn,
                         zero_ptr + expert * stride_ze + n64 * stride_zn, n_ok,
                         0, K, stride_sk, stride_zk, GROUP, CODE, NATIVE_FP8, DOT_PRECISION, HAS_ZERO, SCALE_E4M3,
                         TILE_DOT, PTX, EVEN_K, BLOCK_M, BLOCK_N, BLOCK_K)
    store_routed(acc, out_ptr, routed_ptr, pair, n, m_ok, n_ok, stride_om, MUL_ROUTED)


def choose_moe_config(num_pairs: int, num_experts: int, x: torch.Tensor) -> TileConfig:
    """The tile config of a MoE W4A16 call (``routed_blocks.choose_routed_config``)."""
    return choose_routed_config(num_pairs, num_experts, x, TILE_CONFIGS, FP32_CONFIG)


def moe_w4a16_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                     zero_points: torch.Tensor | None, blocks: RoutedBlocks, config: TileConfig, *,
                     group: int, codes: str, pairs_per_x_row: int,
                     routed_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Row p of the result is x[p // pairs_per_x_row] @ W_e^T for each routed pair p of expert e,
    times ``routed_weights[p]`` when given.

    Parameters
    ----------
    x : (rows, K) float16 / bfloat16 / float32, last dimension contiguous: the hidden states
        (``pairs_per_x_row`` = top_k) or one row per pair (1).
    packed : (E, N, K / 2) uint8, element 2j of a row in the low nibble of byte j.
    scales : (E, N, K / group), and ``zero_points`` (E, N, K / group) or None: as
        ``w4a16.w4a16_matmul`` takes one expert's.
    blocks : the pairs grouped by expert in ``config.block_m``-row blocks.
    routed_weights : (num_pairs,) float32, the router's weight of each pair, or None.

    Returns (num_pairs, N) in x's dtype, fp32 accumulation as ``w4a16_matmul`` gives it.
    """
    check_tensor("x", x, shape=(None, None), dtypes=X_DTYPES, last_dim_contiguous=True)
    k = x.shape[1]
    check_tensor("packed", packed, shape=(None, None, k // 2), dtypes=(torch.uint8,), last_dim_contiguous=True)
    experts, n = packed.shape[:2]
    for name, t in (("scales", scales), ("zero_points", zero_points)):
        if t is not None and (t.dim() != 3 or t.shape[0] != experts):
            raise ValueError(f"{name}: expected ({experts}, N, K / group) like packed, got {tuple(t.shape)}")
    check_four_bit_weight(packed[0], scales[0], None if zero_points is None else zero_points[0], k=k, k_from="x",
                          group=group, codes=codes)
    check_routed_call(x, blocks, config, pairs_per_x_row, routed_weights)
    out = x.new_empty((blocks.num_pairs, n))
    if blocks.num_pairs == 0 or n == 0:
        return out

    zeros = zero_points if zero_points is not None else scales
    operands = launch_operands(scales[0], None if zero_points is None else zero_points[0])
    _moe_w4a16_kernel[routed_grid(blocks, n, config)](
        x, packed, scales, zeros, out, routed_weights if routed_weights is not None else scales,
        blocks.sorted_pairs, blocks.block_experts, blocks.padded_count,
        blocks.num_pairs, n, k, blocks.sorted_pairs.shape[0], x.stride(0), packed.stride(0), packed.stride(1), out.stride(0),
        scales.stride(0), operands.pop("stride_sn"), operands.pop("stride_sk"),
        zeros.stride(0), operands.pop("stride_zn"), operands.pop("stride_zk"),
        PAIRS_PER_X_ROW=pairs_per_x_row, MUL_ROUTED=routed_weights is not None,
        GROUP=group, CODE=CODES.index(codes), NATIVE_FP8=native_fp8_decode(x),
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else None,
        TILE_DOT=TILE_DOTS.index(tile_dot(codes, group, scales, config, x)), PTX=ptx_decode(x),
        EVEN_K=even_k(k, config.block_k),
        **operands, **config.launch_args(),
    )
    return out

