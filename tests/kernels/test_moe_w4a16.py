"""The MoE W4A16 kernel under TRITON_INTERPRET=1 (or compiled on a GPU) against its fp32
reference, pair by pair: every code kind, zero points, E4M3 scale bytes, uneven routing (one
expert gets most pairs, one none), gate/up's rows gathered per token and down's per pair, the
router's weights, and the GPU's tile sizes.

The routed blocks are built here by a plain loop over SGLang's ``moe_align_block_size``
contract, not by breccia's aligner (``tests/integration/test_moe_triton.py`` checks that one),
so a fault in either shows as itself.
"""

from __future__ import annotations

import pytest
import torch

from breccia_sglang.kernels import launch
from breccia_sglang.kernels.gemm import RoutedBlocks, choose_moe_config, moe_w4a16_matmul
from breccia_sglang.kernels.gemm.moe_w4a16 import INTERPRETER_CONFIG
from breccia_sglang.kernels.gemm.reference import moe_w4a16_reference, w4a16_weight

from .pool import DEVICE, captured, on_device, replays
from .test_w4a16 import make_weight

X_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])
E, TOP_K = 5, 2


def routing(tokens: int, gen: torch.Generator) -> torch.Tensor:
    """(tokens, TOP_K) distinct experts from 0..3 (expert 4 never routed), expert 0 in most rows."""
    first = torch.where(torch.rand(tokens, generator=gen) < 0.7, 0, torch.randint(1, 4, (tokens,), generator=gen))
    second = (first + torch.randint(1, 4, (tokens,), generator=gen)) % 4
    return torch.stack([first, second], dim=1).to(torch.int32)


def blocks_by_loop(topk_ids: torch.Tensor, block_m: int, num_experts: int = E) -> RoutedBlocks:
    """SGLang's alignment contract written as a loop: each expert's pairs in pair order, padded
    to whole blocks with the pair count; worst-case buffers; blocks past the real ones -1."""
    flat = topk_ids.flatten().tolist()
    pairs = len(flat)
    sorted_pairs, experts = [], []
    for e in range(num_experts):
        mine = [p for p, chosen in enumerate(flat) if chosen == e]
        mine += [pairs] * (-len(mine) % block_m)
        sorted_pairs += mine
        experts += [e] * (len(mine) // block_m)
    real = len(sorted_pairs)
    capacity = -(-(pairs + num_experts * (block_m - 1)) // block_m) * block_m
    sorted_pairs += [pairs] * (capacity - real)
    experts += [-1] * (capacity // block_m - len(experts))
    as_tensor = lambda values: on_device(torch.tensor(values, dtype=torch.int32))  # noqa: E731
    return RoutedBlocks(as_tensor(sorted_pairs), as_tensor(experts), as_tensor([real]), pairs, block_m)


def stacked_weight(codes, group, zero_dtype, scale_dtype, n, k, gen):
    """E experts of ``test_w4a16.make_weight``'s random weights, stacked: (E, N, K / 2) codes,
    (E, N, K / group) scales and zero points (or None)."""
    experts = [make_weight(codes, group, zero_dtype, scale_dtype, n, k, gen) for _ in range(E)]
    return tuple(None if parts[0] is None else torch.stack(parts) for parts in zip(*experts))


def assert_matches_reference(out, x, packed, scales, zeros, topk_ids, group, codes, pairs_per_x_row, routed):
    ref = moe_w4a16_reference(x.cpu(), packed.cpu(), scales.cpu(), None if zeros is None else zeros.cpu(),
                              topk_ids.cpu(), group=group, codes=codes, pairs_per_x_row=pairs_per_x_row,
                              routed_weights=None if routed is None else routed.cpu())
    # The bound of the dense kernel's test (test_w4a16.assert_matches_reference), pair by pair:
    # |x| @ |W_e|^T (times |routed weight|) bounds each output and its partial sums; fp32 x
    # differs from the reference only in summation order (< 1e-5 of it for K <= 384); fp16 /
    # bf16 x may round each dequantized weight once and the output once (twice the unit). The
    # router's weight is one more fp32 product (2^-24). The absolute term covers fp16
    # subnormal weights (2^-25 each).
    rows = x.cpu().float()[torch.arange(topk_ids.numel()) // pairs_per_x_row]
    experts = topk_ids.flatten().long().cpu()
    magnitude = torch.empty_like(ref)
    for e in experts.unique().tolist():
        weight = w4a16_weight(packed[e].cpu(), scales[e].cpu(), None if zeros is None else zeros[e].cpu(),
                              group=group, codes=codes)
        magnitude[experts == e] = rows[experts == e].abs() @ weight.abs().T
    weight_of_pair = 1.0 if routed is None else routed.cpu().abs()[:, None]
    unit = {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[x.dtype]
    tiny = 2.0**-25 * rows.abs().sum(dim=1, keepdim=True) * weight_of_pair
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    excess = (out.cpu().float() - ref).abs() - ((2 * unit + 1e-5) * magnitude * weight_of_pair + tiny)
    assert excess.max().item() <= 0, (out.cpu().float() - ref).abs().max().item()


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
    # The grid covers the worst case, and the programs past padded_count must exit. Here the
    # first block past the count holds real pairs tagged with expert 4 (the buffers' stale
    # contents, as far as the kernel may know): run, it would overwrite those pairs' rows with
    # expert 4's product.
    gen = torch.Generator().manual_seed(4)
    packed, scales, _ = (t if t is None else on_device(t) for t in
                         stacked_weight("int4", 32, None, torch.float32, 40, 64, gen))
    topk_ids = torch.tensor([[0, 1], [0, 2], [1, 3]], dtype=torch.int32)
    x = on_device(torch.randn(3, 64, generator=gen).to(torch.float16))
    blocks = blocks_by_loop(topk_ids, INTERPRETER_CONFIG.block_m)
    real = int(blocks.padded_count[0])
    stale_pairs, stale_experts = blocks.sorted_pairs.clone(), blocks.block_experts.clone()
    stale_pairs[real:real + 6] = torch.arange(6, dtype=torch.int32)
    stale_experts[real // blocks.block_m] = 4
    stale = RoutedBlocks(stale_pairs, stale_experts, blocks.padded_count, blocks.num_pairs, blocks.block_m)
    out = moe_w4a16_matmul(x, packed, scales, None, stale, INTERPRETER_CONFIG, group=32, codes="int4",
                           pairs_per_x_row=TOP_K)
    assert_matches_reference(out, x, packed, scales, None, topk_ids, 32, "int4", TOP_K, None)


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
