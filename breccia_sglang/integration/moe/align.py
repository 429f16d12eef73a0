"""SGLang's ``moe_align_block_size`` contract, in torch: for running SGLang's fused MoE Triton
kernels where its CUDA op is not installed (the interpreter on CPU; the benchmark on a bare GPU
machine). Serving never uses it: SGLang's Triton MoE runner calls its own op.

The fused kernels process the routed (token, k) pairs in blocks of ``BLOCK_SIZE_M`` rows that
all belong to one expert. So the flat pair indices (token * top_k + k) are grouped by expert,
each group padded to a multiple of the block with the out-of-range index ``top_k * tokens``
(the kernels mask it), and each block is tagged with its expert.
"""

from __future__ import annotations

import torch


def align_routed_pairs(topk_ids: torch.Tensor, block_m: int, num_experts: int):
    """(tokens, top_k) expert ids -> (sorted_token_ids (P,) int32, expert_ids (P / block_m,) int32,
    num_tokens_post_padded (1,) int32), P the padded pair count. An expert with no pair gets no
    block. Syncs with the host once (P)."""
    flat = topk_ids.flatten().to(torch.int64)
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    order = torch.argsort(flat, stable=True)  # pairs grouped by expert, in pair order
    expert_of = flat[order]
    rank_in_expert = torch.arange(flat.numel(), device=flat.device) - (torch.cumsum(counts, 0) - counts)[expert_of]
    total = int(padded.sum())
    sorted_ids = torch.full((total,), flat.numel(), dtype=torch.int32, device=flat.device)
    sorted_ids[(torch.cumsum(padded, 0) - padded)[expert_of] + rank_in_expert] = order.to(torch.int32)
    expert_ids = torch.repeat_interleave(torch.arange(num_experts, device=flat.device), padded // block_m)
    return sorted_ids, expert_ids.to(torch.int32), torch.tensor([total], dtype=torch.int32, device=flat.device)
