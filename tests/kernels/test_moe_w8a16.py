"""The MoE W8A16 kernel under TRITON_INTERPRET=1 (or compiled on a GPU) against its fp32
reference, pair by pair: one scale per row (per-tensor FP8), 1 x B blocks inside, on and across
K tiles, MXFP8's E8M0-sized scales, every E4M3 code, uneven routing (one expert gets most pairs,
one none), gate/up's rows gathered per token and down's per pair, the router's weights, and the
GPU's tile sizes. The routed blocks and the error bound are ``routed.py``'s."""

from __future__ import annotations

import re

import pytest
import torch

from breccia_sglang.kernels import launch
from breccia_sglang.kernels.gemm import choose_moe_w8a16_config, moe_w8a16_matmul
from breccia_sglang.kernels.gemm.reference import w8a16_weight
from breccia_sglang.kernels.gemm.routed_blocks import INTERPRETER_CONFIG

from .pool import DEVICE, captured, on_device, replays
from .routed import (E, TOP_K, assert_matches_moe_reference, blocks_by_loop, routing, stale_blocks,
                     with_remote_pairs)
from .test_w8a16 import make_weight

# bf16 tl.dot is wrong under the interpreter; compiled on a GPU it is checked too.
X_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])


def stacked_weight(group, scale_kind: str, n: int, k: int, gen: torch.Generator):
    """E experts of ``test_w8a16.make_weight``'s random E4M3 weights, stacked: (E, N, K) codes
    and (E, N, K / group) fp32 scales ((E, N, 1) with ``group=None``)."""
    weights, scales = zip(*(make_weight(group, scale_kind, n, k, gen) for _ in range(E)))
    return torch.stack(weights), torch.stack(scales)


def assert_matches_reference(out, x, weight, scales, topk_ids, group, pairs_per_x_row, routed):
    def expert_weight(e):
        return w8a16_weight(weight[e].cpu(), scales[e].cpu(), group=group)
    assert_matches_moe_reference(out, x, expert_weight, topk_ids, pairs_per_x_row, routed)


def run_case(group, scale_kind, tokens, n, k, x_dtype, pairs_per_x_row, with_routed, seed):
    gen = torch.Generator().manual_seed(seed)
    weight, scales = stacked_weight(group, scale_kind, n, k, gen)
    topk_ids = routing(tokens, gen)
    x = on_device(torch.randn(tokens * TOP_K // pairs_per_x_row, k, generator=gen).to(x_dtype))
    routed = on_device(torch.rand(tokens * TOP_K, generator=gen)) if with_routed else None
    config = choose_moe_w8a16_config(tokens * TOP_K, E, x)
    blocks = blocks_by_loop(topk_ids, config.block_m)
    out = moe_w8a16_matmul(x, weight, scales, blocks, config, group=group, pairs_per_x_row=pairs_per_x_row,
                           routed_weights=routed)
    assert_matches_reference(out, x, weight, scales, topk_ids, group, pairs_per_x_row, routed)


# (group, scales, tokens, N, K, pairs a row of x, router weights). The interpreter's tile is
# 16 x 32 x 64: groups 32 sit inside a K tile, 64 fill one, 128 spans two; N = 40 / 72 end
# mid-tile, K = 96 / 160 mid K tile; 1 token leaves 15 rows of each block masked, 33 tokens
# give expert 0 three blocks. Gate/up reads a token's row for each of its TOP_K pairs (2),
# down one row a pair with the router's weight. "e8m0": MXFP8's powers of two.
CASES = [
    (None, "fp32", 7, 40, 96, TOP_K, False),
    (None, "fp32", 33, 72, 160, 1, True),
    (32, "e8m0", 1, 72, 160, TOP_K, False),
    (32, "e8m0", 33, 40, 96, 1, True),
    (64, "fp32", 7, 72, 192, 1, True),
    (128, "fp32", 1, 40, 256, TOP_K, False),
]


@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("group,scale_kind,tokens,n,k,pairs_per_x_row,with_routed", CASES)
def test_moe_w8a16_matches_fp32_reference(group, scale_kind, tokens, n, k, pairs_per_x_row, with_routed, x_dtype):
    run_case(group, scale_kind, tokens, n, k, x_dtype, pairs_per_x_row, with_routed,
             seed=CASES.index((group, scale_kind, tokens, n, k, pairs_per_x_row, with_routed)))


def test_per_row_scales_may_come_without_their_column():
    # Per-tensor FP8 stacked as (E, N) row scales, SGLang's per-channel shape less its last 1.
    gen = torch.Generator().manual_seed(9)
    weight, scales = stacked_weight(None, "fp32", 40, 96, gen)
    topk_ids = routing(5, gen)
    x = on_device(torch.randn(5, 96, generator=gen).to(torch.float16))
    blocks = blocks_by_loop(topk_ids, INTERPRETER_CONFIG.block_m)
    out = moe_w8a16_matmul(x, weight, scales[..., 0], blocks, INTERPRETER_CONFIG, group=None, pairs_per_x_row=TOP_K)
    assert_matches_reference(out, x, weight, scales, topk_ids, None, TOP_K, None)


@pytest.mark.parametrize("group,tokens,n,k", [
    (128, 3, 72, 256),  # 2 pairs an expert on average: decode's 16 x 64 x 128, one scale a K tile
    (32, 45, 40, 256),  # 18 on average: 32 x 64 x 128, four groups a K tile
    (None, 45, 72, 160),  # per row, K ending mid-tile
])
def test_gpu_tile_sizes_match_the_reference_too(group, tokens, n, k, monkeypatch):
    # A GPU takes the dense kernel's tile configs by rows per expert; run them here (a no-op on a GPU).
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    run_case(group, "fp32", tokens, n, k, torch.float16, TOP_K, True, seed=tokens + n)


def test_blocks_past_the_routed_count_are_never_run():
    # The grid covers the worst case; the programs past padded_count must exit (routed.stale_blocks).
    gen = torch.Generator().manual_seed(4)
    weight, scales = stacked_weight(32, "fp32", 40, 64, gen)
    topk_ids = torch.tensor([[0, 1], [0, 2], [1, 3]], dtype=torch.int32)
    x = on_device(torch.randn(3, 64, generator=gen).to(torch.float16))
    stale = stale_blocks(blocks_by_loop(topk_ids, INTERPRETER_CONFIG.block_m), stale_expert=4)
    out = moe_w8a16_matmul(x, weight, scales, stale, INTERPRETER_CONFIG, group=32, pairs_per_x_row=TOP_K)
    assert_matches_reference(out, x, weight, scales, topk_ids, 32, TOP_K, None)


@pytest.mark.parametrize("pairs_per_x_row", [TOP_K, 1])
def test_pairs_of_another_ranks_experts_give_zero_rows(pairs_per_x_row):
    # Expert parallelism (test_moe_w4a16's test of the same name says why this could fail).
    gen = torch.Generator().manual_seed(11)
    weight, scales = (on_device(t) for t in stacked_weight(32, "e8m0", 40, 96, gen))
    topk_ids = with_remote_pairs(routing(7, gen))
    x = on_device(torch.randn(7 * TOP_K // pairs_per_x_row, 96, generator=gen).to(torch.float16))
    routed = on_device(torch.rand(7 * TOP_K, generator=gen)) if pairs_per_x_row == 1 else None
    config = choose_moe_w8a16_config(7 * TOP_K, E, x)
    out = moe_w8a16_matmul(x, weight, scales, blocks_by_loop(topk_ids, config.block_m), config, group=32,
                           pairs_per_x_row=pairs_per_x_row, routed_weights=routed)
    assert_matches_reference(out, x, weight, scales, topk_ids, 32, pairs_per_x_row, routed)
    remote = topk_ids.flatten() < 0
    assert 0 < remote.sum() < remote.numel() and (out.cpu()[remote] == 0).all()


def test_no_routed_pairs_give_an_empty_output():
    weight, scales = stacked_weight(None, "fp32", 40, 64, torch.Generator().manual_seed(5))
    blocks = blocks_by_loop(torch.zeros((0, TOP_K), dtype=torch.int32), INTERPRETER_CONFIG.block_m)
    x = on_device(torch.zeros((0, 64), dtype=torch.float16))
    out = moe_w8a16_matmul(x, weight, scales, blocks, INTERPRETER_CONFIG, group=None, pairs_per_x_row=TOP_K)
    assert out.shape == (0, 40) and out.dtype == torch.float16


@pytest.mark.parametrize("change,message", [
    ("block_m", "grouped in 32-row blocks"),
    ("rows", "3 rows at 1 pairs a row, but 6 pairs routed"),
    ("scales", "scales: expected shape (5, 40, 2)"),
    ("group", "K=64 is not a whole number of 48-wide scale groups"),
    ("weight", "weight: expected shape ('*', '*', 64), got (40, 64)"),
])
def test_mismatched_operands_are_refused_by_name(change, message):
    gen = torch.Generator().manual_seed(6)
    weight, scales = stacked_weight(32, "fp32", 40, 64, gen)
    topk_ids = torch.tensor([[0, 1], [0, 2], [1, 3]], dtype=torch.int32)
    blocks = blocks_by_loop(topk_ids, 32 if change == "block_m" else INTERPRETER_CONFIG.block_m)
    x = on_device(torch.randn(3, 64, generator=gen).to(torch.float16))
    kwargs = dict(group=48 if change == "group" else 32, pairs_per_x_row=1 if change == "rows" else TOP_K)
    scales = scales[:, :, :1] if change == "scales" else scales
    weight = weight[0] if change == "weight" else weight
    with pytest.raises(ValueError, match=re.escape(message)):
        moe_w8a16_matmul(x, weight, scales, blocks, INTERPRETER_CONFIG, **kwargs)


# --- CUDA graphs (GPU only) ------------------------------------------------------------------

@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs: run with BRECCIA_KERNEL_DEVICE=cuda on a GPU")
def test_moe_w8a16_replays_from_a_cuda_graph():
    # A MoE layer runs inside SGLang's captured decode step: replays over new activations (same
    # routing) must match the reference, with nothing read on the host.
    gen = torch.Generator().manual_seed(18)
    weight, scales = stacked_weight(128, "fp32", 72, 256, gen)
    topk_ids = routing(4, gen)
    x = on_device(torch.zeros(4, 256, dtype=torch.float16))
    config = choose_moe_w8a16_config(topk_ids.numel(), E, x)
    blocks = blocks_by_loop(topk_ids, config.block_m)
    graph, out = captured(lambda: moe_w8a16_matmul(x, weight, scales, blocks, config, group=128,
                                                   pairs_per_x_row=TOP_K))
    for _ in replays(graph, x, gen):
        assert_matches_reference(out, x, weight, scales, topk_ids, 128, TOP_K, None)
