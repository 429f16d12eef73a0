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
