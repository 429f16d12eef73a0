"""How the weight-only GEMMs cut a launch: the K split covers every K tile once, leaves no split
empty, adds programs only where output tiles are too few, and its sum is exact in fp32 order."""

from __future__ import annotations

import pytest
import torch

from breccia_sglang.kernels.gemm import tiling
from breccia_sglang.kernels.gemm.tiling import TileConfig

from .pool import on_device

DECODE = TileConfig(16, 64, 128, 1, 4, 4)
H200 = torch.device("cuda", 0)


@pytest.fixture
def h200(monkeypatch):
    monkeypatch.setattr(tiling, "_sm_count", lambda index: 132)


@pytest.mark.parametrize("m,n,k", [(1, 6144, 4096), (1, 4096, 14336), (8, 28672, 4096), (16, 40, 4224),
                                   (1, 64, 128), (1, 64, 200), (2048, 4096, 4096)])
def test_splits_cover_k_once_and_none_is_empty(h200, m, n, k):
    split = tiling.split_k_for(m, n, k, DECODE, H200)
    steps = -(-k // DECODE.block_k)
    assert 1 <= split.splits <= tiling.MAX_SPLIT_K
    assert split.splits * split.steps >= steps > (split.splits - 1) * split.steps  # the last split is not empty


def test_only_launches_short_of_programs_split(h200):
    # Llama-3-8B's qkv at M = 1: 96 tiles of 64 columns for 132 SMs -> split; 33792 columns
    # give 528 tiles (4 per SM) already; M = 2048 is arithmetic-bound, never split.
    assert tiling.split_k_for(1, 6144, 4096, DECODE, H200).splits > 1
    tiles = (1 + 15) // 16 * (6144 // 64)
    assert tiles * tiling.split_k_for(1, 6144, 4096, DECODE, H200).splits >= tiling.PROGRAMS_PER_SM * 132
    assert tiling.split_k_for(1, 33792, 4096, DECODE, H200).splits == 1
    assert tiling.split_k_for(2048, 4096, 4096, TileConfig(128, 128, 64, 8, 8, 3), H200).splits == 1
    assert tiling.split_k_for(1, 64, 128, DECODE, H200).splits == 1  # one K tile: nothing to split


def test_sum_splits_adds_in_split_order_and_rounds_once():
    gen = torch.Generator().manual_seed(0)
    partials = on_device(torch.randn(5, 7, 33, generator=gen) * 1000)
    out = on_device(torch.empty(7, 33, dtype=torch.float16))
    expected = partials[0].clone()
    for s in range(1, 5):
        expected += partials[s]
    assert torch.equal(tiling.sum_splits(partials, out), expected.to(torch.float16))


class _LaunchSpy:
    """Stands in for a Triton kernel object and notes the EVEN_K each launch passes."""

    def __init__(self, kernel, seen: list):
        self.kernel, self.seen = kernel, seen

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.seen.append(kwargs["EVEN_K"])
            return launch(*args, **kwargs)
        return run


@pytest.mark.parametrize("kernel", ["w4a16", "w8a16", "dequantize_4bit"])
def test_launches_leave_k_out_of_the_masks_only_when_k_is_whole_tiles(monkeypatch, kernel):
    # EVEN_K drops K from every load mask: a K that ends inside a tile must never take it (its
    # last loads would read past the row), and K = 256, whole tiles for every K step here and on
    # GPUs (64 - 256), takes it. The results match the references in each kernel's own tests.
    from breccia_sglang.kernels.gemm import dequantize_packed, w4a16, w8a16
    module, name = {"w4a16": (w4a16, "_w4a16_kernel"), "w8a16": (w8a16, "_w8a16_kernel"),
                    "dequantize_4bit": (dequantize_packed, "_dequantize_4bit_kernel")}[kernel]
    seen: list = []
    monkeypatch.setattr(module, name, _LaunchSpy(getattr(module, name), seen))
    for k in (256, 160):
        x = on_device(torch.randn(1, k, dtype=torch.float16))
        packed = on_device(torch.randint(0, 256, (40, k // 2), dtype=torch.uint8))
        scales = on_device(torch.full((40, k // 32), 0.01))
        if kernel == "w4a16":
            w4a16.w4a16_matmul(x, packed, scales, group=32, codes="int4")
        elif kernel == "w8a16":
            codes = on_device(torch.randint(0, 0x70, (40, k), dtype=torch.uint8))
            w8a16.w8a16_matmul(x, codes, scales, group=32)
        else:
            dequantize_packed.dequantize_4bit(packed, scales, group=32, codes="int4", dtype=torch.float16)
    assert seen == [True, False]
