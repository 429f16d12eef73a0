"""SGLang's ``moe_align_block_size`` contract, and where it is computed.

The fused MoE kernels (SGLang's and ours) process the routed (token, k) pairs in blocks of
``block_m`` rows that all belong to one expert. So the flat pair indices (token * top_k + k)
are grouped by expert, each group padded to a multiple of the block with the out-of-range
index ``top_k * tokens`` (the kernels mask it), and each block is tagged with its expert. The
buffers have the size of the worst case (every group's last block one row full, SGLang's
bound), blocks past the real ones are tagged -1, and the real count is a device tensor: no
host sync, so a CUDA graph captures it.

Under expert parallelism SGLang's dispatcher hands the kernels local expert ids, with -1 for a
pair whose expert is on another rank. Those pairs form one more group, first (SGLang's "+1"
convention: group 0 is id -1, group e + 1 expert e), whose blocks are tagged -1 too; being
inside the real count, their rows are the kernels' to zero.

``align_routed_pairs`` does it in torch (CPU, the interpreter, a GPU without sgl-kernel);
``routed_blocks`` takes SGLang's CUDA op where it runs.
"""

from __future__ import annotations

import torch

from ...kernels.gemm import RoutedBlocks


def align_routed_pairs(topk_ids: torch.Tensor, block_m: int, num_experts: int):
    """(tokens, top_k) expert ids (-1: another rank's) -> (sorted_token_ids (P,) int32,
    expert_ids (P / block_m,) int32, num_tokens_post_padded (1,) int32), P the worst-case padded
    pair count. An expert with no pair gets no block. No host sync."""
    group = topk_ids.flatten().to(torch.int64) + 1  # 0: another rank's expert, e + 1: expert e
    groups, pairs, device = num_experts + 1, group.numel(), group.device
    counts = torch.zeros(groups, dtype=torch.int64, device=device).scatter_add_(0, group, torch.ones_like(group))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    order = torch.argsort(group, stable=True)  # pairs grouped, in pair order
    group_of = group[order]
    rank_in_group = torch.arange(pairs, device=device) - (torch.cumsum(counts, 0) - counts)[group_of]
    capacity = -(-(pairs + groups * (block_m - 1)) // block_m) * block_m
    sorted_ids = torch.full((capacity,), pairs, dtype=torch.int32, device=device)
    sorted_ids[(ends - padded)[group_of] + rank_in_group] = order.to(torch.int32)
    block_starts = torch.arange(0, capacity, block_m, device=device)
    block_group = torch.searchsorted(ends, block_starts, right=True)  # `groups` past the real blocks
    expert_ids = torch.where(block_group < groups, block_group - 1, -1).to(torch.int32)
    return sorted_ids, expert_ids, ends[-1:].to(torch.int32)


def sglang_aligns(device: torch.device) -> bool:
    """Whether SGLang's CUDA ``moe_align_block_size`` runs here (it needs sgl-kernel's op).
    Tried once on a tiny routing, so call it while loading, never inside a CUDA graph capture."""
    if device.type != "cuda":
        return False
    try:
        from sglang.srt.layers.moe.moe_runner.triton_utils.moe_align_block_size import moe_align_block_size

        moe_align_block_size(torch.zeros((1, 1), dtype=torch.int32, device=device), 16, 1)
        return True
    except Exception:  # ImportError, or the op missing from this install: the torch path serves
        return False


def routed_blocks(topk_ids: torch.Tensor, block_m: int, num_experts: int, use_sglang: bool) -> RoutedBlocks:
    """The pairs of ``topk_ids`` grouped by expert in ``block_m``-row blocks, by SGLang's op
    when ``use_sglang`` (``sglang_aligns``), else in torch."""
    if use_sglang:
        from sglang.srt.layers.moe.moe_runner.triton_utils.moe_align_block_size import moe_align_block_size

        aligned = moe_align_block_size(topk_ids, block_m, num_experts)
    else:
        aligned = align_routed_pairs(topk_ids, block_m, num_experts)
    return RoutedBlocks(*aligned, num_pairs=topk_ids.numel(), block_m=block_m)
