"""Block FP8 (1x32 / 1x64 / 1x128) and MXFP8 on SGLang's Triton W8A8 block kernel, under
TRITON_INTERPRET=1, against the fp32 W8A8 reference (``weights.w8a8``), on awkward shapes:
M = 1, 7 and 33; N = 77, not a multiple of any tile; K = 2B and 3B."""

from __future__ import annotations

import breccia
import pytest
import torch

from breccia_sglang import names
from breccia_sglang.format import make_recipe
from breccia_sglang.integration.gemm import LinearSpec
from breccia_sglang.integration.gemm import block_fp8_tiles as tiles
from breccia_sglang.integration.gemm import triton_block_fp8 as tbf
from breccia_sglang.weights import quantize_activations_fp8
from breccia_sglang.weights.w8a8 import w8a8_reference_linear


def assert_matches_w8a8(out: torch.Tensor, ref: torch.Tensor) -> None:
    # Both use the same FP8 activations and weights; they differ by the fp32 summation order
    # (~1e-6 relative) and the kernel's fp16 output rounding (2^-11 relative): 1e-3 of the
    # outputs' magnitude bounds both with room.
    assert out.dtype == torch.float16 and out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= 1e-3 * max(1.0, ref.abs().max().item())


def weight(recipe, n: int, k: int, gen: torch.Generator):
    w = torch.randn(n, k, generator=gen)
    w[:, 5] *= 20  # an outlier input channel, so blocks' scales differ
    return breccia.cast(w, recipe)


def run_kernel(x: torch.Tensor, st) -> torch.Tensor:
    """The kernel class's own path: its weight conversion after loading, then apply()."""
    n, k = st.data.shape
    spec = LinearSpec("layer", st.recipe, st.layout, k, (n,), x.dtype, "cpu", None,
                      forced=names.GEMM_TRITON_BLOCK_FP8, interpreted=True)
    assert tbf.TritonBlockFp8Kernel.why_not(spec) is None
    kernel = tbf.TritonBlockFp8Kernel().configure(spec)
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(st.data, requires_grad=False)
    layer.weight_scale = torch.nn.Parameter(st.scale, requires_grad=False)
    kernel.process_weights_after_loading(layer)
    return kernel.apply(layer, x, None)


CASES = [(b, m, k_blocks) for b in (32, 64, 128) for m, k_blocks in ((1, 2), (7, 3), (33, 2))]


@pytest.mark.parametrize("block,m,k_blocks", CASES)
def test_block_fp8_matches_the_w8a8_reference(block, m, k_blocks):
    gen = torch.Generator().manual_seed(block + m)
    st = weight(make_recipe("fp8-block", block_k=block), 77, k_blocks * block, gen)
    x = torch.randn(m, k_blocks * block, generator=gen).half()
    ref = w8a8_reference_linear(x, st.data, st.scale, st.recipe, st.layout, group=block)
    assert_matches_w8a8(run_kernel(x, st), ref)


@pytest.mark.parametrize("m,k_blocks", [(1, 2), (7, 3), (33, 2)])
def test_mxfp8_takes_the_same_path_losslessly(m, k_blocks):
    gen = torch.Generator().manual_seed(m)
    st = weight(make_recipe("mxfp8"), 77, k_blocks * 32, gen)
    x = torch.randn(m, k_blocks * 32, generator=gen).half()
    ref = w8a8_reference_linear(x, st.data, st.scale, st.recipe, st.layout, group=32)
    assert_matches_w8a8(run_kernel(x, st), ref)


MERGED_ROWS = (48, 16, 13)  # q, k, v-like shards of a merged layer


def merged_weight(recipe, k: int, gen: torch.Generator):
    """(the merged layer's weight, its shards): SGLang loads the shards' rows one after another,
    scales with them."""
    shards = [weight(recipe, rows, k, gen) for rows in MERGED_ROWS]
    merged = breccia.from_buffer(torch.cat([s.data for s in shards]), torch.cat([s.scale for s in shards]),
                                 recipe, shards[0].layout)
    return merged, shards


def test_a_merged_layer_is_its_shards_rows():
    gen = torch.Generator().manual_seed(9)
    merged, shards = merged_weight(make_recipe("fp8-block", block_k=64), 128, gen)
    x = torch.randn(7, 128, generator=gen).half()
    out = run_kernel(x, merged)
    for shard, rows in zip(shards, torch.split(out, list(MERGED_ROWS), dim=1)):
        assert_matches_w8a8(rows.contiguous(), w8a8_reference_linear(x, shard.data, shard.scale, shard.recipe,
                                                                     shard.layout, group=64))


@pytest.mark.parametrize("block,m,k_blocks", [(32, 1, 3), (64, 7, 2), (128, 33, 3)])
@pytest.mark.parametrize("swap_ab,split_k", [(True, 1), (True, 2), (False, 4), (True, 16)])
def test_sglangs_hopper_variant_swapped_and_split_matches_the_w8a8_reference(block, m, k_blocks, swap_ab, split_k,
                                                                            monkeypatch):
    # The H200's table sends small M to SGLang's _w8a8_block_fp8_matmul_hopper with the MMA
    # swapped and K split over programs (fp32 partials summed by SGLang's reduce kernel). Split
    # 16 over 3 K tiles leaves most splits empty: they must add zeros.
    gen = torch.Generator().manual_seed(block + m + split_k)
    st = weight(make_recipe("fp8-block", block_k=block), 77, k_blocks * block, gen)
    x = torch.randn(m, k_blocks * block, generator=gen).half()
    ref = w8a8_reference_linear(x, st.data, st.scale, st.recipe, st.layout, group=block)
    config = tiles.TileConfig(16, 32, None, 1, 1, 1, swap_ab=swap_ab, split_k=split_k)
    assert config.hopper and config.why_not(block) is None
    monkeypatch.setattr(tbf, "choose_config", lambda *args: config)
    codes, scales = quantize_activations_fp8(x, block)
    assert_matches_w8a8(tbf.block_fp8_matmul(codes, scales, st.data.view(torch.float8_e4m3fn), st.scale, block,
                                             torch.float16, True), ref)


def test_every_listed_gpu_config_is_right_for_every_block():
    shipped = [tiles.load_tables(path) for path in tiles.TUNED_DIR.glob("block_fp8_*.json")]
    for block in tbf.BLOCKS:
        for table in (tiles.TILE_CONFIGS, *(tables[block] for tables in shipped if block in tables)):
            for _, config in table:
                assert config.why_not(block) is None, (block, config)
                assert config.block_n >= 16
        for m in (1, 16, 17, 100, 4096):
            assert tiles.choose_config(m, block, interpreted=False).why_not(block) is None


def test_a_tile_k_that_would_be_wrong_is_never_chosen(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    st = weight(make_recipe("fp8-block", block_k=64), 77, 192, gen)
    x = torch.randn(7, 192, generator=gen).half()
    ref = w8a8_reference_linear(x, st.data, st.scale, st.recipe, st.layout, group=64)
    codes, scales = quantize_activations_fp8(x, 64)
    planted = tiles.TileConfig(16, 32, 128, 1, 1, 1)  # tile K 128 over 64-wide scale blocks
    assert "does not divide" in planted.why_not(64)
    # The trap is real: launched as it is, the planted config gives a wrong result...
    monkeypatch.setattr(tbf, "choose_config", lambda m, block, interpreted, device_name: planted)
    wrong = tbf.block_fp8_matmul(codes, scales, st.data, st.scale, 64, torch.float16, True)
    assert (wrong.float() - ref).abs().max().item() > 0.05 * ref.abs().max().item()
    # ...and planted where the path looks configs up, it is never chosen.
    monkeypatch.undo()
    monkeypatch.setattr(tiles, "INTERPRETER_CONFIG", planted)
    monkeypatch.setattr(tiles, "TILE_CONFIGS", [(1 << 62, planted), *tiles.TILE_CONFIGS])
    for interpreted in (True, False):
        assert tiles.choose_config(7, 64, interpreted).why_not(64) is None
    assert_matches_w8a8(tbf.block_fp8_matmul(codes, scales, st.data, st.scale, 64, torch.float16, True), ref)
