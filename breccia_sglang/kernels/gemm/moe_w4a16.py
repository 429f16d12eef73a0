"""W4A16 for mixture-of-experts layers: each routed (token, expert) pair times that expert's 4-bit
weight, the codes read in place from the stacked (E, N, K / 2) experts.

The pairs arrive grouped by expert in blocks of BLOCK_M rows, the layout of SGLang's
``moe_align_block_size`` (``RoutedBlocks``): ``sorted_pairs`` holds flat pair indices
(token * top_k + k), each expert's run padded to whole blocks with the out-of-range index
``num_pairs``; ``block_experts[b]`` is block b's expert; ``padded_count[0]`` is how many rows
hold real blocks. The grid covers the upper bound of blocks and the programs past the count
exit at once, so nothing waits on the host and a CUDA graph captures a launch.

A program computes one (BLOCK_M pairs, BLOCK_N outputs) tile through the dense kernel's K loop
(``w4a16.w4a16_tile_sum``): it gathers its pairs' activation rows (row ``pair // top_k`` of the
hidden states for gate/up, row ``pair`` of the intermediate for down) and reads its expert's
codes, scales and zero points. Every tile dot of the dense kernel is here, PTX decode included.
There is no K split: at decode sizes each routed pair already has its own block (top_k blocks
a token) and the N tiles of each, a few hundred programs for real MoE shapes.

SGLang's own W4A16 MoE kernel (``fused_moe_kernel_gptq_awq``) reads every packed byte twice,
through ``offs_k // 2`` addressing, and measured 0.05-0.1x BF16 on an H200 (RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..launch import check_tensor, native_fp8_decode
from .four_bit import CODES, check_four_bit_weight, launch_operands
from .tiling import TileConfig, even_k, output_tile, pick_config
from .w4a16 import FP32_CONFIG, TILE_CONFIGS, TILE_DOTS, X_DTYPES, ptx_decode, tile_dot, w4a16_tile_sum

# Under the interpreter every program runs in Python: tl.dot's smallest tiles, and K = 64
# (groups 16 / 32 inside a K tile, 64 on one, 128 across two), as the dense kernel takes.
INTERPRETER_CONFIG = TileConfig(16, 32, 64, 1, 1, 1)


@dataclass(frozen=True)
class RoutedBlocks:
    """The routed (token, expert) pairs of one MoE layer call, grouped by expert in blocks of
    ``block_m`` rows (SGLang's ``moe_align_block_size`` contract, see the module docstring)."""

    sorted_pairs: torch.Tensor  # (capacity,) int32: pair indices, num_pairs where padding
    block_experts: torch.Tensor  # (capacity / block_m,) int32: each block's expert
    padded_count: torch.Tensor  # (1,) int32: rows of real blocks, a multiple of block_m
    num_pairs: int  # tokens * top_k
    block_m: int


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
    expert = tl.load(experts_ptr + pid_m).to(tl.int64)
    pair = tl.load(pairs_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = pair < num_pairs, n < N
    n64 = n.to(tl.int64)
    acc = w4a16_tile_sum(x_ptr + (pair // PAIRS_PER_X_ROW).to(tl.int64)[:, None] * stride_xm, m_ok,
                         packed_ptr + expert * stride_pe + n64 * stride_pn,
                         scale_ptr + expert * stride_se + n64 * stride_sn,
                         zero_ptr + expert * stride_ze + n64 * stride_zn, n_ok,
                         0, K, stride_sk, stride_zk, GROUP, CODE, NATIVE_FP8, DOT_PRECISION, HAS_ZERO, SCALE_E4M3,
                         TILE_DOT, PTX, EVEN_K, BLOCK_M, BLOCK_N, BLOCK_K)
    if MUL_ROUTED:  # the router's weight of each pair, applied in fp32 before the output rounds
        acc *= tl.load(routed_ptr + pair, mask=m_ok, other=0.0)[:, None]
    out_ptrs = out_ptr + pair.to(tl.int64)[:, None] * stride_om + n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def choose_moe_config(num_pairs: int, num_experts: int, x: torch.Tensor) -> TileConfig:
    """The tile config of a MoE call routing ``num_pairs`` pairs over ``num_experts`` experts:
    the dense kernel's config for the rows an expert gets on average (decode: one or two, so
    16-row blocks). Known from the shapes alone, before any routing is read."""
    return pick_config(triton.cdiv(num_pairs, num_experts), x, TILE_CONFIGS, FP32_CONFIG, INTERPRETER_CONFIG)


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
    rows, k = x.shape
    check_tensor("packed", packed, shape=(None, None, k // 2), dtypes=(torch.uint8,), last_dim_contiguous=True)
    experts, n = packed.shape[:2]
    for name, t in (("scales", scales), ("zero_points", zero_points)):
        if t is not None and (t.dim() != 3 or t.shape[0] != experts):
            raise ValueError(f"{name}: expected ({experts}, N, K / group) like packed, got {tuple(t.shape)}")
    check_four_bit_weight(packed[0], scales[0], None if zero_points is None else zero_points[0], k=k, k_from="x",
                          group=group, codes=codes)
    if blocks.block_m != config.block_m:
        raise ValueError(f"blocks: grouped in {blocks.block_m}-row blocks, the config's tiles are {config.block_m}")
    if rows * pairs_per_x_row != blocks.num_pairs:
        raise ValueError(f"x: {rows} rows at {pairs_per_x_row} pairs a row, but {blocks.num_pairs} pairs routed")
    if routed_weights is not None:
        check_tensor("routed_weights", routed_weights, shape=(blocks.num_pairs,), dtypes=(torch.float32,))
    out = x.new_empty((blocks.num_pairs, n))
    if blocks.num_pairs == 0 or n == 0:
        return out

    capacity = blocks.sorted_pairs.shape[0]
    zeros = zero_points if zero_points is not None else scales
    operands = launch_operands(scales[0], None if zero_points is None else zero_points[0])
    grid = (triton.cdiv(capacity, config.block_m) * triton.cdiv(n, config.block_n),)
    _moe_w4a16_kernel[grid](
        x, packed, scales, zeros, out, routed_weights if routed_weights is not None else scales,
        blocks.sorted_pairs, blocks.block_experts, blocks.padded_count,
        blocks.num_pairs, n, k, capacity, x.stride(0), packed.stride(0), packed.stride(1), out.stride(0),
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

