"""The MoE W4A16 kernel under TRITON_INTERPRET=1 (or compiled on a GPU) against its fp32
reference, pair by pair: every code kind, zero points, E4M3 scale bytes, uneven routing (one
expert gets most pairs, one none), gate/up's rows gathered per token and down's per pair, the
router's weights, and the GPU's tile sizes.
The routed blocks and the error bound are ``routed.py``'s.
"""

from __future__ import annotations

import pytest
import torch

from breccia_sglang.kernels import launch
from breccia_sglang.kernels.gemm import choose_moe_config, moe_w4a16_matmul
from breccia_sglang.kernels.gemm.reference import w4a16_weight
from breccia_sglang.kernels.gemm.routed_blocks import INTERPRETER_CONFIG

from .pool import DEVICE, captured, on_device, replays
from .routed import (E, TOP_K, assert_matches_moe_reference, blocks_by_loop, routing, stale_blocks,
                     with_remote_pairs)
from .test_w4a16 import make_weight

X_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])
def stacked_weight(codes, group, zero_dtype, scale_dtype, n, k, gen):
    """E experts of ``test_w4a16.make_weight``'s random weights, stacked: (E, N, K / 2) codes,
    (E, N, K / group) scales and zero points (or None)."""
    experts = [make_weight(codes, group, zero_dtype, scale_dtype, n, k, gen) for _ in range(E)]
    return tuple(None if parts[0] is None else torch.stack(parts) for parts in zip(*experts))


def assert_matches_reference(out, x, packed, scales, zeros, topk_ids, group, codes, pairs_per_x_row, routed):
    def expert_weight(e):
        return w4a16_weight(packed[e].cpu(), scales[e].cpu(), None if zeros is None else zeros[e].cpu(), group=group,
                            codes=codes)
    assert_matches_moe_reference(out, x, expert_weight, topk_ids, pairs_per_x_row, routed)


def run_case(codes, group, zero_dtype, scale_dtype, tokens, n, k, x_dtype, pairs_per_x_row, with_routed, seed):
    gen = torch.Generator().manual_seed(seed)
    packed, scales, zeros = (t if t is None else on_device(t) for t in
                             stacked_weight(codes, group, zero_dtype, scale_dtype, n, k, gen))
    topk_ids = routing(tokens, gen)
    x = on_device(torch.randn(tokens * TOP_K // pairs_per_x_row, k, generator=gen).to(x_dtype))
    routed = on_device(torch.rand(tokens * TOP_K, generator=gen)) if with_routed else None
    config = choose_moe_config(tokens * TOP_K, E, x)
    blocks = blocks_by_loop(topk_ids, config.block_m)
    out = moe_w4a16_matmul(x, packed, scales, zeros, blocks, config, group=group, codes=codes,
                           pairs_per_x_row=pairs_per_x_row, routed_weights=routed)
    assert_matches_reference(out, x, packed, scales, zeros, topk_ids, group, codes, pairs_per_x_row, routed)


# (codes, group, zero points, scale dtype, tokens, N, K, pairs a row of x, router weights). The
# interpreter's tile is 16 x 32 x 64: N = 40 / 72 end mid-tile, K = 96 / 160 mid K tile; 1 token
# leaves 15 rows of each block masked, 33 tokens give expert 0 three blocks. Gate/up reads a
# token's row for each of its TOP_K pairs (2), down one row a pair with the router's weight.
CASES = [
    ("int4", 32, None, torch.float32, 7, 40, 96, TOP_K, False),
    ("int4", 128, None, torch.float16, 33, 72, 256, 1, True),  # one scale over each K tile: integer dot
    ("uint4", 64, torch.float16, torch.float32, 1, 40, 192, TOP_K, False),
    ("uint4", 32, None, torch.bfloat16, 33, 40, 160, 1, True),
    ("e2m1", 16, None, torch.uint8, 7, 72, 160, TOP_K, False),
    ("e2m1", 16, None, torch.uint8, 33, 40, 96, 1, True),
]


@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("codes,group,zero_dtype,scale_dtype,tokens,n,k,pairs_per_x_row,with_routed", CASES)
def test_moe_w4a16_matches_fp32_reference(codes, group, zero_dtype, scale_dtype, tokens, n, k, pairs_per_x_row,
                                          with_routed, x_dtype):
    run_case(codes, group, zero_dtype, scale_dtype, tokens, n, k, x_dtype, pairs_per_x_row, with_routed,
             seed=CASES.index((codes, group, zero_dtype, scale_dtype, tokens, n, k, pairs_per_x_row, with_routed)))


@pytest.mark.parametrize("codes,group,zero_dtype,scale_dtype,tokens,n,k", [
    ("e2m1", 16, None, torch.uint8, 3, 72, 256),  # 2 pairs an expert on average: decode's 16 x 64 x 128
    ("int4", 128, None, torch.float32, 45, 40, 256),  # 18 on average: 32 x 128 x 128
])
def test_gpu_tile_sizes_match_the_reference_too(codes, group, zero_dtype, scale_dtype, tokens, n, k, monkeypatch):
    # A GPU takes the dense kernel's tile configs by rows per expert; run them here (a no-op on a GPU).
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    run_case(codes, group, zero_dtype, scale_dtype, tokens, n, k, torch.float16, TOP_K, True, seed=tokens + n)


def test_blocks_past_the_routed_count_are_never_run():
    # The grid covers the worst case, and the programs past padded_count must exit
    # (routed.stale_blocks: the first block past the count holds real pairs of expert 4).
    gen = torch.Generator().manual_seed(4)
    packed, scales, _ = (t if t is None else on_device(t) for t in
                         stacked_weight("int4", 32, None, torch.float32, 40, 64, gen))
    topk_ids = torch.tensor([[0, 1], [0, 2], [1, 3]], dtype=torch.int32)
    x = on_device(torch.randn(3, 64, generator=gen).to(torch.float16))
    stale = stale_blocks(blocks_by_loop(topk_ids, INTERPRETER_CONFIG.block_m), stale_expert=4)
    out = moe_w4a16_matmul(x, packed, scales, None, stale, INTERPRETER_CONFIG, group=32, codes="int4",
                           pairs_per_x_row=TOP_K)
    assert_matches_reference(out, x, packed, scales, None, topk_ids, 32, "int4", TOP_K, None)


@pytest.mark.parametrize("pairs_per_x_row", [TOP_K, 1])
def test_pairs_of_another_ranks_experts_give_zero_rows(pairs_per_x_row):
    # Expert parallelism: SGLang's dispatcher marks the pairs of other ranks' experts -1, and its
    # align op puts them in blocks tagged -1 inside the routed count (routed.blocks_by_loop). Run
    # as an expert, such a block would read expert -1's codes out of bounds; skipped, its rows
    # would keep whatever the output buffer held.
    gen = torch.Generator().manual_seed(11)
    packed, scales, zeros = (t if t is None else on_device(t) for t in
                             stacked_weight("uint4", 32, torch.float16, torch.float32, 40, 96, gen))
    topk_ids = with_remote_pairs(routing(7, gen))
    x = on_device(torch.randn(7 * TOP_K // pairs_per_x_row, 96, generator=gen).to(torch.float16))
    routed = on_device(torch.rand(7 * TOP_K, generator=gen)) if pairs_per_x_row == 1 else None
    config = choose_moe_config(7 * TOP_K, E, x)
    out = moe_w4a16_matmul(x, packed, scales, zeros, blocks_by_loop(topk_ids, config.block_m), config, group=32,
                           codes="uint4", pairs_per_x_row=pairs_per_x_row, routed_weights=routed)
    assert_matches_reference(out, x, packed, scales, zeros, topk_ids, 32, "uint4", pairs_per_x_row, routed)
    remote = topk_ids.flatten() < 0
    assert 0 < remote.sum() < remote.numel() and (out.cpu()[remote] == 0).all()


def test_no_routed_pairs_give_an_empty_output():
    gen = torch.Generator().manual_seed(5)
    packed, scales, _ = (t if t is None else on_device(t) for t in
                         stacked_weight("e2m1", 16, None, torch.uint8, 40, 64, gen))
    blocks = blocks_by_loop(torch.zeros((0, TOP_K), dtype=torch.int32), INTERPRETER_CONFIG.block_m)
    x = on_device(torch.zeros((0, 64), dtype=torch.float16))
    out = moe_w4a16_matmul(x, packed, scales, None, blocks, INTERPRETER_CONFIG, group=16, codes="e2m1",
                           pairs_per_x_row=TOP_K)
    assert out.shape == (0, 40) and out.dtype == torch.float16


@pytest.mark.parametrize("change,message", [
    ("block_m", "grouped in 32-row blocks"),
    ("rows", "3 rows at 1 pairs a row, but 6 pairs routed"),
    ("scales", "scales: expected (5, N, K / group)"),
    ("routed", "routed_weights"),
])
def test_mismatched_operands_are_refused_by_name(change, message):
    gen = torch.Generator().manual_seed(6)
    packed, scales, _ = (t if t is None else on_device(t) for t in
                         stacked_weight("int4", 32, None, torch.float32, 40, 64, gen))
    topk_ids = torch.tensor([[0, 1], [0, 2], [1, 3]], dtype=torch.int32)
    blocks = blocks_by_loop(topk_ids, 32 if change == "block_m" else INTERPRETER_CONFIG.block_m)
    x = on_device(torch.randn(3, 64, generator=gen).to(torch.float16))
    kwargs = dict(group=32, codes="int4", pairs_per_x_row=1 if change == "rows" else TOP_K)
    if change == "scales":
        scales = scales[:4]
    if change == "routed":
        kwargs["routed_weights"] = on_device(torch.ones(5))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        moe_w4a16_matmul(x, packed, scales, None, blocks, INTERPRETER_CONFIG, **kwargs)


# --- CUDA graphs (GPU only) ------------------------------------------------------------------

@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs: run with BRECCIA_KERNEL_DEVICE=cuda on a GPU")
def test_moe_w4a16_replays_from_a_cuda_graph():
    # A MoE layer runs inside SGLang's captured decode step: replays over new activations (same
    # routing) must match the reference, with nothing read on the host.
    gen = torch.Generator().manual_seed(18)
    packed, scales, _ = (on_device(t) for t in stacked_weight("e2m1", 16, None, torch.uint8, 72, 160, gen)[:2])
    topk_ids = routing(4, gen)
    x = on_device(torch.zeros(4, 160, dtype=torch.float16))
    config = choose_moe_config(topk_ids.numel(), E, x)
    blocks = blocks_by_loop(topk_ids, config.block_m)
    graph, out = captured(lambda: moe_w4a16_matmul(x, packed, scales, None, blocks, config, group=16, codes="e2m1",
                                                   pairs_per_x_row=TOP_K))
    for _ in replays(graph, x, gen):
        assert_matches_reference(out, x, packed, scales, None, topk_ids, 16, "e2m1", TOP_K, None)
