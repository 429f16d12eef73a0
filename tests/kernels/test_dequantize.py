"""The one-pass FP8 dequantize (prefill-sized batches' weight) under TRITON_INTERPRET=1 (or
compiled on a GPU): bit for bit the emulated kernel's weight, breccia's dequantize rounded to
the dtype, for every E4M3 code, scale groups 16 to 256 (96 too) and one scale per row, N and K
that end mid-tile, strided rows, and the GPU's tile run on CPU."""

from __future__ import annotations

import breccia
import pytest
import torch

from breccia_sglang.format import make_recipe
from breccia_sglang.kernels import launch
from breccia_sglang.kernels.gemm import dequantize_fp8
from breccia_sglang.kernels.gemm.dequantize import dequantized_linear
from breccia_sglang.kernels.gemm.reference import w8a16_weight
from breccia_sglang.weights.codes import decode_e8m0

from .pool import DEVICE, assert_is_dense_matmul, captured, on_device, replays
from .test_w8a16 import make_weight

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (group, scales, N, K): the interpreter's tile is 16 x 64. Groups 16 / 32 sit inside a K tile,
# 64 fills it, 128 and 256 span two and four, 96 is no power of two (a scale per element); N = 33
# / 40 / 72 and K = 96 / 160 end mid-tile.
CASES = [
    (16, "fp32", 40, 96),
    (32, "e8m0", 33, 160),
    (64, "fp32", 72, 192),
    (128, "fp32", 33, 384),
    (256, "fp32", 40, 512),
    (96, "fp32", 40, 192),
    (None, "fp32", 72, 160),
]


def expected(weight, scales, group, dtype):
    """The emulated kernel's weight: each code's exact value times its scale in fp32, rounded to dtype."""
    return w8a16_weight(weight, scales, group=group).to(dtype)


def assert_same_bits(out: torch.Tensor, want: torch.Tensor) -> None:
    # Bit for bit, not within a tolerance: both are one fp32 product rounded once to the dtype.
    assert out.dtype == want.dtype and out.shape == want.shape
    assert torch.equal(out.cpu().view(torch.uint8), want.cpu().view(torch.uint8)), \
        (out.float() - want.float()).abs().max().item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group,scale_kind,n,k", CASES)
def test_dequantize_is_the_emulated_kernels_weight_bit_for_bit(group, scale_kind, n, k, dtype):
    gen = torch.Generator().manual_seed(CASES.index((group, scale_kind, n, k)))
    weight, scales = make_weight(group, scale_kind, n, k, gen, nan_codes=DEVICE != "cpu")
    assert_same_bits(dequantize_fp8(weight, scales, group=group, dtype=dtype), expected(weight, scales, group, dtype))


@pytest.mark.parametrize("recipe,group", [("fp8-block-64", 64), ("mxfp8", 32), ("fp8", None)])
def test_dequantize_matches_breccias_own_dequantize(recipe, group):
    # breccia's own ScaledTensors: block FP8 and per-tensor cast by breccia, MXFP8 built from
    # codes and E8M0 exponents (its cast searches every code per element through NumPy).
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(40, 192, generator=gen) * 0.05
    if recipe == "mxfp8":
        codes = torch.randint(0, 0x7F, (40, 192), generator=gen, dtype=torch.uint8)
        exponents = torch.randint(118, 126, (40, 192 // 32), generator=gen, dtype=torch.uint8)
        st = breccia.from_buffer(codes, exponents, make_recipe("mxfp8"), breccia.PerBlockMN(1, 32))
        scales = decode_e8m0(st.scale)
    else:
        st = breccia.cast(w, make_recipe("fp8-block", block_k=64) if group else make_recipe("fp8"))
        scales = st.scale.float().reshape(1).expand(40) if group is None else st.scale
    out = dequantize_fp8(on_device(st.data.view(torch.float8_e4m3fn)), on_device(scales.contiguous()), group=group,
                         dtype=torch.bfloat16)
    assert_same_bits(out, breccia.dequantize(st).to(torch.bfloat16))


@pytest.mark.parametrize("group,n,k", [(32, 40, 320), (128, 72, 512), (None, 33, 300), (96, 40, 288)])
def test_the_gpu_tile_gives_the_same_bits(group, n, k, monkeypatch):
    # A GPU takes 32 x 256 tiles: K = 320 / 300 / 288 end mid-tile, N = 33 / 40 / 72 mid-tile;
    # groups of 32 sit eight to a tile, 128 two, 96 across tiles. Run that tile here.
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    gen = torch.Generator().manual_seed(n + k)
    weight, scales = make_weight(group, "fp32", n, k, gen)
    assert_same_bits(dequantize_fp8(weight, scales, group=group, dtype=torch.float16),
                     expected(weight, scales, group, torch.float16))


def test_strided_rows_in_and_out():
    # Rows of a wider buffer on both sides (a merged layer's slice, a reused workspace): every
    # address comes from the strides, and nothing outside the view is written.
    gen = torch.Generator().manual_seed(3)
    wide, scales = make_weight(64, "fp32", 40, 256, gen)
    weight = wide[:, :192]
    scales = scales[:, :3]
    out_buffer = on_device(torch.full((40, 200), -1.0, dtype=torch.float16))
    out = dequantize_fp8(weight, scales, group=64, dtype=torch.float16, out=out_buffer[:, :192])
    assert out.data_ptr() == out_buffer.data_ptr()
    assert_same_bits(out, expected(weight, scales, 64, torch.float16))
    assert (out_buffer[:, 192:] == -1).all()


def test_dequantized_linear_is_the_emulated_kernels_matmul():
    gen = torch.Generator().manual_seed(4)
    weight, scales = make_weight(32, "e8m0", 72, 160, gen)
    x = on_device(torch.randn(9, 160, generator=gen).to(torch.float16))
    want = torch.nn.functional.linear(x, expected(weight, scales, 32, torch.float16))
    assert torch.equal(dequantized_linear(x, weight, scales, group=32), want)


@pytest.mark.parametrize("call,message", [
    (lambda w, s: dequantize_fp8(w, s, group=0, dtype=torch.float16), "group"),
    (lambda w, s: dequantize_fp8(w, s, group=48, dtype=torch.float16), "K=64 is not a whole number"),
    (lambda w, s: dequantize_fp8(w, s, group=32, dtype=torch.int8), "dtype"),
    (lambda w, s: dequantize_fp8(w, s[:, :1], group=32, dtype=torch.float16), "scales: expected shape"),
    (lambda w, s: dequantize_fp8(w, s, group=32, dtype=torch.float16,
                                 out=torch.empty(8, 64, dtype=torch.bfloat16)), "out: expected dtype"),
    (lambda w, s: dequantize_fp8(w.float(), s, group=32, dtype=torch.float16), "weight: expected dtype"),
])
def test_bad_arguments_are_refused_by_name(call, message):
    weight, scales = make_weight(32, "fp32", 8, 64, torch.Generator().manual_seed(0))
    with pytest.raises((ValueError, TypeError), match=message):
        call(weight.cpu(), scales.cpu())


# --- CUDA graphs (GPU only) ------------------------------------------------------------------

@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs: run with BRECCIA_KERNEL_DEVICE=cuda on a GPU")
def test_the_prefill_route_replays_from_a_cuda_graph():
    # A batch past the route's bound may be a captured decode step (SGLang captures up to its
    # cuda_graph_max_bs): the pass and the matmul must not sync or read values on the host.
    gen = torch.Generator().manual_seed(17)
    weight, scales = make_weight(32, "e8m0", 72, 1024, gen)
    x = on_device(torch.zeros(40, 1024, dtype=torch.bfloat16))
    graph, out = captured(lambda: dequantized_linear(x, weight, scales, group=32))
    for _ in replays(graph, x, gen):
        assert_is_dense_matmul(out, x, expected(weight, scales, 32, torch.bfloat16))
