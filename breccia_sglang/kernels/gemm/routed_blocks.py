"""What the MoE weight-only kernels (``moe_w4a16.py``, ``moe_w8a16.py``) share: the routed
(token, expert) pairs grouped by expert in blocks, and a program's rows and outputs over them.

The pairs arrive grouped by expert in blocks of BLOCK_M rows, the layout of SGLang's
``moe_align_block_size`` (``RoutedBlocks``): ``sorted_pairs`` holds flat pair indices
(token * top_k + k), each expert's run padded to whole blocks with the out-of-range index
``num_pairs``; ``block_experts[b]`` is block b's expert; ``padded_count[0]`` is how many rows
hold real blocks. The grid covers the upper bound of blocks and the programs past the count
exit at once, so nothing waits on the host and a CUDA graph captures a launch. A real block
tagged -1 holds pairs routed to another rank's expert (expert parallelism): its rows are zeros.

A program computes one (BLOCK_M pairs, BLOCK_N outputs) tile through its dense kernel's K loop:
it gathers its pairs' activation rows (row ``pair // top_k`` of the hidden states for gate/up,
row ``pair`` of the intermediate for down) and reads its expert's weight. There is no K split:
at decode sizes each routed pair already has its own block (top_k blocks a token) and the N
tiles of each, a few hundred programs for real MoE shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..launch import check_tensor
from .tiling import TileConfig, pick_config

# Under the interpreter every program runs in Python: tl.dot's smallest tiles, and K = 64
# (groups 16 / 32 inside a K tile, 64 on one, 128 across two), as the dense kernels take.
INTERPRETER_CONFIG = TileConfig(16, 32, 64, 1, 1, 1)


@dataclass(frozen=True)
class RoutedBlocks:
    """The routed (token, expert) pairs of one MoE layer call, grouped by expert in blocks of
    ``block_m`` rows (SGLang's ``moe_align_block_size`` contract, see the module docstring)."""

    sorted_pairs: torch.Tensor  # (capacity,) int32: pair indices, num_pairs where padding
    block_experts: torch.Tensor  # (capacity / block_m,) int32: each block's expert, -1: none here
    padded_count: torch.Tensor  # (1,) int32: rows of real blocks, a multiple of block_m
    num_pairs: int  # tokens * top_k
    block_m: int


def choose_routed_config(num_pairs: int, num_experts: int, x: torch.Tensor,
                         by_m: list[tuple[int, TileConfig]], fp32: TileConfig) -> TileConfig:
    """The tile config of a MoE call routing ``num_pairs`` pairs over ``num_experts`` experts:
    the dense kernel's config (``by_m``, ``fp32``) for the rows an expert gets on average
    (decode: one or two, so 16-row blocks). Known from the shapes alone, before any routing is read."""
    return pick_config(triton.cdiv(num_pairs, num_experts), x, by_m, fp32, INTERPRETER_CONFIG)


def check_routed_call(x: torch.Tensor, blocks: RoutedBlocks, config: TileConfig, pairs_per_x_row: int,
                      routed_weights: torch.Tensor | None) -> None:
    """Raise if ``x``'s rows, the blocks, the config and the router's weights do not describe one call."""
    if blocks.block_m != config.block_m:
        raise ValueError(f"blocks: grouped in {blocks.block_m}-row blocks, the config's tiles are {config.block_m}")
    if x.shape[0] * pairs_per_x_row != blocks.num_pairs:
        raise ValueError(f"x: {x.shape[0]} rows at {pairs_per_x_row} pairs a row, but {blocks.num_pairs} pairs routed")
    if routed_weights is not None:
        check_tensor("routed_weights", routed_weights, shape=(blocks.num_pairs,), dtypes=(torch.float32,))


def routed_grid(blocks: RoutedBlocks, n: int, config: TileConfig) -> tuple[int]:
    """Programs for every block the call could hold (its capacity) times the N tiles."""
    return (triton.cdiv(blocks.sorted_pairs.shape[0], config.block_m) * triton.cdiv(n, config.block_n),)


@triton.jit
def routed_rows(pid_m, pid_n, pairs_ptr, experts_ptr, num_pairs, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Block ``pid_m``'s expert (int64) and pairs, tile ``pid_n``'s outputs, and their masks."""
    expert = tl.load(experts_ptr + pid_m).to(tl.int64)
    pair = tl.load(pairs_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return expert, pair, n, pair < num_pairs, n < N


@triton.jit
def store_routed(acc, out_ptr, routed_ptr, pair, n, m_ok, n_ok, stride_om, MUL_ROUTED: tl.constexpr):
    """Row ``pair`` of the output: the fp32 tile, times each pair's router weight when asked
    (in fp32, before the output rounds)."""
    if MUL_ROUTED:
        acc *= tl.load(routed_ptr + pair, mask=m_ok, other=0.0)[:, None]
    out_ptrs = out_ptr + pair.to(tl.int64)[:, None] * stride_om + n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
