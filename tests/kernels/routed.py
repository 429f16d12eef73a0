"""What the MoE kernel tests share: routing with one busy expert and one idle, the routed blocks
built by a plain loop over SGLang's ``moe_align_block_size`` contract (not by breccia's aligner,
which ``tests/integration/test_moe_triton.py`` checks, so a fault in either shows as itself),
and the error bound of a MoE result against its fp32 reference."""

from __future__ import annotations

from collections.abc import Callable

import torch

from breccia_sglang.kernels.gemm import RoutedBlocks
from breccia_sglang.kernels.gemm.reference import moe_reference

from .pool import on_device

E, TOP_K = 5, 2


def routing(tokens: int, gen: torch.Generator) -> torch.Tensor:
    """(tokens, TOP_K) distinct experts from 0..3 (expert 4 never routed), expert 0 in most rows."""
    first = torch.where(torch.rand(tokens, generator=gen) < 0.7, 0, torch.randint(1, 4, (tokens,), generator=gen))
    second = (first + torch.randint(1, 4, (tokens,), generator=gen)) % 4
    return torch.stack([first, second], dim=1).to(torch.int32)


def blocks_by_loop(topk_ids: torch.Tensor, block_m: int, num_experts: int = E) -> RoutedBlocks:
    """SGLang's alignment contract written as a loop: the pairs of other ranks' experts (id -1,
    expert parallelism) first, then each expert's, in pair order, each group padded to whole
    blocks with the pair count; worst-case buffers (one more group for -1); blocks of -1 pairs
    and blocks past the real ones tagged -1."""
    flat = topk_ids.flatten().tolist()
    pairs = len(flat)
    sorted_pairs, experts = [], []
    for e in range(-1, num_experts):
        mine = [p for p, chosen in enumerate(flat) if chosen == e]
        mine += [pairs] * (-len(mine) % block_m)
        sorted_pairs += mine
        experts += [e] * (len(mine) // block_m)
    real = len(sorted_pairs)
    capacity = -(-(pairs + (num_experts + 1) * (block_m - 1)) // block_m) * block_m
    sorted_pairs += [pairs] * (capacity - real)
    experts += [-1] * (capacity // block_m - len(experts))
    as_tensor = lambda values: on_device(torch.tensor(values, dtype=torch.int32))  # noqa: E731
    return RoutedBlocks(as_tensor(sorted_pairs), as_tensor(experts), as_tensor([real]), pairs, block_m)


def with_remote_pairs(topk_ids: torch.Tensor) -> torch.Tensor:
    """``topk_ids`` as one rank of expert parallelism sees it: token 0's pairs and every third
    token's second pair routed to another rank's experts (-1)."""
    remote = topk_ids.clone()
    remote[0] = -1
    remote[::3, 1] = -1
    return remote


def stale_blocks(blocks: RoutedBlocks, stale_expert: int) -> RoutedBlocks:
    """``blocks`` with the first block past the routed count holding real pairs (0..5) of
    ``stale_expert``: a buffer's stale contents, as far as a kernel may know. Run, that block
    would overwrite those pairs' rows with the stale expert's product."""
    real = int(blocks.padded_count[0])
    pairs, experts = blocks.sorted_pairs.clone(), blocks.block_experts.clone()
    pairs[real:real + 6] = torch.arange(6, dtype=torch.int32)
    experts[real // blocks.block_m] = stale_expert
    return RoutedBlocks(pairs, experts, blocks.padded_count, blocks.num_pairs, blocks.block_m)


def assert_matches_moe_reference(out: torch.Tensor, x: torch.Tensor, expert_weight: Callable[[int], torch.Tensor],
                                 topk_ids: torch.Tensor, pairs_per_x_row: int, routed: torch.Tensor | None) -> None:
    """``out`` against ``moe_reference`` over ``expert_weight(e)`` (expert e's fp32 dequantized
    weight, on CPU), within the bound of the dense kernels' tests pair by pair."""
    n = out.shape[1]
    x, topk_ids = x.cpu(), topk_ids.cpu()
    routed = None if routed is None else routed.cpu()
    ref = moe_reference(x, expert_weight, n, topk_ids, pairs_per_x_row=pairs_per_x_row, routed_weights=routed)
    # |x| @ |W_e|^T (times |routed weight|) bounds each output and its partial sums; fp32 x
    # differs from the reference only in summation order (< 1e-5 of it for K <= 384); fp16 /
    # bf16 x may round each dequantized weight once and the output once (twice the unit). The
    # router's weight is one more fp32 product (2^-24). The absolute term covers fp16
    # subnormal weights (2^-25 each).
    rows = x.float()[torch.arange(topk_ids.numel()) // pairs_per_x_row]
    experts = topk_ids.flatten().long()
    magnitude = torch.zeros_like(ref)  # 0 for another rank's pairs (-1): they must give exact zeros
    for e in experts[experts >= 0].unique().tolist():
        magnitude[experts == e] = rows[experts == e].abs() @ expert_weight(e).abs().T
    weight_of_pair = 1.0 if routed is None else routed.abs()[:, None]
    unit = {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[x.dtype]
    tiny = 2.0**-25 * rows.abs().sum(dim=1, keepdim=True) * weight_of_pair
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    excess = (out.cpu().float() - ref).abs() - ((2 * unit + 1e-5) * magnitude * weight_of_pair + tiny)
    assert excess.max().item() <= 0, (out.cpu().float() - ref).abs().max().item()
