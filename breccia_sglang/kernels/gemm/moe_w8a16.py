"""W8A16 for mixture-of-experts layers: each routed (token, expert) pair times that expert's FP8
E4M3 weight, the codes read in place from the stacked (E, N, K) experts.

The pairs come grouped by expert in blocks (``routed_blocks.py``, SGLang's align layout); a
program computes one (BLOCK_M pairs, BLOCK_N outputs) tile through the dense kernel's K loop
(``w8a16.w8a16_tile_sum``), reading its expert's codes and scales: one scale per row
(per-tensor FP8, each shard's scale repeated over its rows) or per row and K group (block FP8's
1 x B, MXFP8's 32 with its E8M0 exponents as exact fp32 powers of two).

It is the FP8 expert kernel of GPUs without FP8 tensor cores (sm_80 / sm_86), where SGLang's
W8A8 ``fused_moe_kernel`` does not run, and of scale blocks that kernel does not take.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import native_fp8_decode, ptx_decode
from .routed_blocks import (RoutedBlocks, check_routed_call, choose_routed_config, routed_grid, routed_rows,
                            store_routed)
from .tiling import TileConfig, even_k, output_tile
from .w8a16 import FP32_CONFIG, TILE_CONFIGS, checked_operands, w8a16_tile_sum


@triton.jit
def _moe_w8a16_kernel(
    x_ptr, weight_ptr, scale_ptr, out_ptr, routed_ptr, pairs_ptr, experts_ptr, padded_ptr,
    num_pairs, N, K, capacity, stride_xm, stride_we, stride_wn, stride_om, stride_se, stride_sn, stride_sk,
    PAIRS_PER_X_ROW: tl.constexpr, MUL_ROUTED: tl.constexpr,
    GROUP: tl.constexpr, NATIVE_FP8: tl.constexpr, PTX: tl.constexpr, DOT_PRECISION: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
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
    acc = w8a16_tile_sum(x_ptr + (pair // PAIRS_PER_X_ROW).to(tl.int64)[:, None] * stride_xm, m_ok,
                         weight_ptr + expert * stride_we + n64[:, None] * stride_wn,
                         scale_ptr + expert * stride_se + n64 * stride_sn, n_ok,
                         0, K, stride_sk, GROUP, NATIVE_FP8, PTX, DOT_PRECISION, EVEN_K, BLOCK_M, BLOCK_N,
                         BLOCK_K)
    store_routed(acc, out_ptr, routed_ptr, pair, n, m_ok, n_ok, stride_om, MUL_ROUTED)


def choose_moe_w8a16_config(num_pairs: int, num_experts: int, x: torch.Tensor) -> TileConfig:
    """The tile config of a MoE W8A16 call (``routed_blocks.choose_routed_config``)."""
    return choose_routed_config(num_pairs, num_experts, x, TILE_CONFIGS, FP32_CONFIG)


def moe_w8a16_matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, blocks: RoutedBlocks,
                     config: TileConfig, *, group: int | None, pairs_per_x_row: int,
                     routed_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Row p of the result is x[p // pairs_per_x_row] @ W_e^T for each routed pair p of expert e,
    times ``routed_weights[p]`` when given.

    Parameters
    ----------
    x : (rows, K) float16 / bfloat16 / float32, last dimension contiguous: the hidden states
        (``pairs_per_x_row`` = top_k) or one row per pair (1).
    weight : (E, N, K) float8_e4m3fn, or uint8 E4M3 bytes; last dimension contiguous.
    scales : fp32 (E, N, K / group); with ``group=None`` (E, N) or (E, N, 1), one per row.
    group : K elements per scale, or None for one scale per row (``w8a16.w8a16_matmul``).
    blocks : the pairs grouped by expert in ``config.block_m``-row blocks.
    routed_weights : (num_pairs,) float32, the router's weight of each pair, or None.

    Returns (num_pairs, N) in x's dtype, fp32 accumulation as ``w8a16_matmul`` gives it.
    """
    scales = checked_operands(x, weight, scales, group, stacked=True)
    k, n = x.shape[1], weight.shape[1]
    check_routed_call(x, blocks, config, pairs_per_x_row, routed_weights)
    out = x.new_empty((blocks.num_pairs, n))
    if blocks.num_pairs == 0 or n == 0:
        return out

    # One scale per row: every K tile reads the row's scale (GROUP = BLOCK_K, stride 0 along K).
    group_size, scale_k_stride = (config.block_k, 0) if group is None else (group, scales.stride(2))
    _moe_w8a16_kernel[routed_grid(blocks, n, config)](
        x, weight.view(torch.uint8), scales, out, routed_weights if routed_weights is not None else scales,
        blocks.sorted_pairs, blocks.block_experts, blocks.padded_count,
        blocks.num_pairs, n, k, blocks.sorted_pairs.shape[0], x.stride(0), weight.stride(0), weight.stride(1),
        out.stride(0), scales.stride(0), scales.stride(1), scale_k_stride,
        PAIRS_PER_X_ROW=pairs_per_x_row, MUL_ROUTED=routed_weights is not None,
        GROUP=group_size, NATIVE_FP8=native_fp8_decode(x), PTX=ptx_decode(x),
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else None, EVEN_K=even_k(k, config.block_k),
        **config.launch_args(),
    )
    return out
