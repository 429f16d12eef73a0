"""The W4A16 dequant-GEMM under TRITON_INTERPRET=1 (or compiled on a GPU) against its fp32
reference: every code kind and group size, with and without zero points, E4M3 scale bytes
(subnormal codes included), M = 1 / 7 / 33, and N and K that are not multiples of the tiles."""

from __future__ import annotations

import pytest
import torch

from breccia_sglang import names
from breccia_sglang.kernels import launch
from breccia_sglang.kernels.gemm import w4a16, w4a16_matmul
from breccia_sglang.kernels.gemm.reference import w4a16_reference, w4a16_weight
from breccia_sglang.weights.packing import pack_low_first

from .pool import DEVICE, captured, on_device, replays

# bf16 tl.dot is wrong under the interpreter; compiled on a GPU it is checked too.
X_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])

# (codes, group, zero points, scale dtype, M, N, K). The interpreter's tile is 16 x 32 x 64:
# groups 16 / 32 sit inside a K tile, 64 fills it, 128 spans two; K = 96 / 160 end mid-tile,
# N = 40 / 72 mid-tile; M = 1 / 7 / 33 leave 15, 9 and 15 rows of the last M tile masked.
CASES = [
    ("int4", 32, None, torch.float32, 1, 40, 96),
    ("int4", 64, None, torch.float16, 33, 72, 192),
    ("int4", 128, None, torch.bfloat16, 7, 40, 384),
    ("uint4", 32, None, torch.float32, 7, 72, 160),
    ("uint4", 64, None, torch.float32, 1, 40, 384),
    ("uint4", 128, None, torch.float32, 33, 40, 384),
    ("uint4", 32, torch.float32, torch.float32, 33, 40, 96),
    ("uint4", 64, torch.bfloat16, torch.float16, 7, 72, 192),
    ("uint4", 128, torch.float32, torch.float32, 1, 72, 384),
    ("e2m1", 16, None, torch.uint8, 1, 40, 96),
    ("e2m1", 16, None, torch.uint8, 7, 72, 160),
    ("e2m1", 16, None, torch.uint8, 33, 40, 192),
    ("e2m1", 16, None, torch.float32, 7, 40, 80),
]


def make_weight(codes: str, group: int, zero_dtype, scale_dtype, n: int, k: int, gen: torch.Generator):
    """Random codes packed two per byte, their scales and (optionally) zero points."""
    packed = pack_low_first(torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8))
    if scale_dtype == torch.uint8:
        # E4M3 codes 1..0x48 (2^-9 .. 4): finite, positive, small enough that fp16 outputs stay
        # finite; every subnormal code (1..7) is among them.
        scales = torch.randint(1, 0x49, (n, k // group), generator=gen, dtype=torch.uint8)
        scales.view(-1)[:7] = torch.arange(1, 8, dtype=torch.uint8)
    else:
        scales = (torch.rand(n, k // group, generator=gen) * 0.05 + 0.005).to(scale_dtype)
    zeros = None
    if zero_dtype is not None:  # integer-valued, as INT4 zero points are
        zeros = torch.randint(0, 16, (n, k // group), generator=gen).to(zero_dtype)
    return tuple(t if t is None else on_device(t) for t in (packed, scales, zeros))


def assert_matches_reference(out, x, packed, scales, zeros, group, codes):
    ref = w4a16_reference(x, packed, scales, zeros, group=group, codes=codes)
    weight = w4a16_weight(packed, scales, zeros, group=group, codes=codes)
    magnitude = x.float().abs() @ weight.abs().T  # bounds |x @ W^T| and every partial sum
    # fp32 x: the same products summed in another order, tile by tile: fewer than
    # (BLOCK_K + K / BLOCK_K) fp32 roundings of 2^-24 along any output, < 1e-5 of the magnitude
    # for K <= 384. fp16 / bf16 x (exact in fp32, so the reference sees the same x): the kernel
    # rounds each dequantized weight once (2^-11 / 2^-8 relative) and the output once (|out| <=
    # magnitude), so at most twice that of the magnitude, plus the fp32 sum. The absolute
    # term covers fp16 subnormal weights (absolute error 2^-25 each).
    unit = {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[x.dtype]
    tolerance = 2 * unit + 1e-5
    tiny = 2.0**-25 * x.float().abs().sum(dim=1, keepdim=True)
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    excess = (out.float() - ref).abs() - (tolerance * magnitude + tiny)
    assert excess.max().item() <= 0, (out.float() - ref).abs().max().item()


@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("codes,group,zero_dtype,scale_dtype,m,n,k", CASES)
def test_w4a16_matches_fp32_reference(codes, group, zero_dtype, scale_dtype, m, n, k, x_dtype):
    gen = torch.Generator().manual_seed(m * 1000 + n * 10 + group + CASES.index(
        (codes, group, zero_dtype, scale_dtype, m, n, k)))
    packed, scales, zeros = make_weight(codes, group, zero_dtype, scale_dtype, n, k, gen)
    x = on_device(torch.randn(m, k, generator=gen).to(x_dtype))
    out = w4a16_matmul(x, packed, scales, zeros, group=group, codes=codes)
    assert_matches_reference(out, x, packed, scales, zeros, group, codes)


@pytest.mark.parametrize("codes,group,zero_dtype,scale_dtype,m,n,k,x_dtype", [
    ("e2m1", 16, None, torch.uint8, 1, 40, 160, torch.float16),  # 16 x 64 x 128: 8 groups per K tile
    ("uint4", 128, torch.float32, torch.float32, 33, 72, 384, torch.float16),  # 32 x 128 x 128: 1 group
    ("int4", 128, None, torch.float32, 300, 40, 256, torch.float16),  # 128 x 128 x 64: 2 tiles a group
    ("e2m1", 16, None, torch.uint8, 33, 72, 160, torch.float32),  # fp32's 32 x 64 x 32: 2 groups
])
def test_gpu_tile_sizes_match_the_reference_too(codes, group, zero_dtype, scale_dtype, m, n, k, x_dtype,
                                               monkeypatch):
    # A GPU takes the tile configs of TILE_CONFIGS by M (FP32_CONFIG for fp32 x); run them
    # here (a no-op on a GPU).
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    gen = torch.Generator().manual_seed(m + n + k)
    packed, scales, zeros = make_weight(codes, group, zero_dtype, scale_dtype, n, k, gen)
    x = on_device(torch.randn(m, k, generator=gen).to(x_dtype))
    out = w4a16_matmul(x, packed, scales, zeros, group=group, codes=codes)
    assert_matches_reference(out, x, packed, scales, zeros, group, codes)


@pytest.mark.parametrize("codes,group,zero_dtype,m,n,k,gpu_tiles", [
    ("int4", 64, None, 7, 40, 192, False),  # the interpreter's 64-wide K tile: one group each
    ("int4", 128, None, 33, 72, 384, False),  # two tiles a group
    ("uint4", 128, torch.float32, 1, 40, 384, False),  # zero points: (x.u - z * sum(x)) * s
    ("uint4", 128, torch.float16, 7, 72, 256, True),  # the GPU's 16 x 32 x 128 tile
])
def test_int4_groups_covering_a_k_tile_round_no_weight(codes, group, zero_dtype, m, n, k, gpu_tiles, monkeypatch):
    # Where one scale covers a row's K tile, the codes' integer values (exact in fp16 / bf16) go
    # into the dot and the scale meets its fp32 result: no dequantized weight is rounded. The
    # error is then the output's one rounding (2^-11 of |out| in fp16) and fp32 sums (< 1e-5 of
    # the magnitude, as above), far under the 2^-11 of the magnitude that rounding each weight
    # may cost (the bound of assert_matches_reference), which these cases would exceed.
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", gpu_tiles)
    gen = torch.Generator().manual_seed(m + n + k + group)
    packed, scales, zeros = make_weight(codes, group, zero_dtype, torch.float32, n, k, gen)
    x = on_device(torch.randn(m, k, generator=gen).to(torch.float16))
    out = w4a16_matmul(x, packed, scales, zeros, group=group, codes=codes)
    ref = w4a16_reference(x, packed, scales, zeros, group=group, codes=codes)
    magnitude = x.float().abs() @ w4a16_weight(packed, scales, zeros, group=group, codes=codes).abs().T
    excess = (out.float() - ref).abs() - (2.0**-11 * ref.abs() + 1e-5 * magnitude)
    assert excess.max().item() <= 0, (out.float() - ref).abs().max().item()


@pytest.mark.parametrize("codes,group,scale_dtype,x_dtype,block_m,block_k,expected", [
    ("int4", 128, torch.float32, torch.bfloat16, 16, 128, "integer"),
    ("uint4", 128, torch.float16, torch.float16, 64, 64, "integer"),  # zero points or none
    ("int4", 64, torch.float32, torch.bfloat16, 16, 128, "scaled"),  # two scales in a K tile
    ("int4", 128, torch.float32, torch.bfloat16, 128, 64, "scaled"),  # a second 128 x 128 fp32 tile spills
    ("int4", 128, torch.float32, torch.float32, 32, 32, "scaled"),  # fp32 x: the exact FMA dot
    ("e2m1", 16, torch.uint8, torch.bfloat16, 16, 128, "fp4"),  # E4M3 scales: products exact in bf16
    ("e2m1", 16, torch.uint8, torch.float16, 128, 64, "fp4"),
    ("e2m1", 16, torch.float32, torch.float16, 16, 128, "scaled"),  # fp32 scales: not exact in fp16
    ("e2m1", 16, torch.uint8, torch.float32, 32, 32, "scaled"),
])
def test_each_launch_takes_the_tile_dot_its_operands_allow(codes, group, scale_dtype, x_dtype, block_m, block_k,
                                                           expected):
    # The fast tile dots give the same products as the scaled one (the tests above), so only
    # this shows which one a launch takes: the one whose products are exact in x's dtype.
    config = w4a16.TileConfig(block_m, 64, block_k, 1, 4, 3)
    scales = torch.zeros(4, 1, dtype=scale_dtype)
    assert w4a16.tile_dot(codes, group, scales, config, torch.zeros(1, 8, dtype=x_dtype)) == expected


@pytest.mark.parametrize("switch", [names.ENV_PTX, names.ENV_W4A16_PTX])  # the name, and its earlier one
def test_the_ptx_decode_runs_on_nvidia_gpus_unless_switched_off(switch, monkeypatch):
    # One switch for the weight-only GEMMs' PTX: W4A16's 4-bit decode and W8A16's E4M3 one.
    x = torch.zeros(1, 8, dtype=torch.bfloat16)
    assert not launch.ptx_decode(x)  # on CPU, or under the interpreter: no assembly runs
    monkeypatch.setattr(launch, "nvidia_ptx", lambda t: t is x)  # as compiled for an NVIDIA GPU
    for name in (names.ENV_PTX, names.ENV_W4A16_PTX):
        monkeypatch.delenv(name, raising=False)
    assert launch.ptx_decode(x)
    monkeypatch.setenv(switch, "0")
    assert not launch.ptx_decode(x)


def test_strided_x_and_scales_are_read_through_their_strides():
    # SGLang may hand over a slice of a wider activation buffer; scales may be a transposed copy.
    gen = torch.Generator().manual_seed(21)
    packed, scales, zeros = make_weight("uint4", 32, torch.float32, torch.float32, 40, 96, gen)
    x = on_device(torch.randn(7, 128, generator=gen))[:, :96]
    scales, zeros = scales.T.contiguous().T, zeros.T.contiguous().T
    assert x.stride(0) == 128 and scales.stride(1) == 40
    out = w4a16_matmul(x, packed, scales, zeros, group=32, codes="uint4")
    assert_matches_reference(out, x, packed, scales, zeros, 32, "uint4")


def test_integer_e4m3_scale_decode_equals_the_native_one(monkeypatch):
    # GPUs before sm_89 decode E4M3 scales with bit moves; both decodes give every scale the same value.
    gen = torch.Generator().manual_seed(5)
    packed, scales, _ = make_weight("e2m1", 16, None, torch.uint8, 40, 96, gen)
    x = on_device(torch.randn(7, 96, generator=gen).to(torch.float16))
    monkeypatch.setattr(launch, "FORCE_INTEGER_FP8_DECODE", True)
    integer = w4a16_matmul(x, packed, scales, group=16, codes="e2m1")
    assert_matches_reference(integer, x, packed, scales, None, 16, "e2m1")
    if launch.native_fp8_on(torch.device(DEVICE)):
        monkeypatch.setattr(launch, "FORCE_INTEGER_FP8_DECODE", False)
        assert torch.equal(integer, w4a16_matmul(x, packed, scales, group=16, codes="e2m1"))


def test_an_empty_batch_gives_an_empty_output():
    packed, scales, _ = make_weight("int4", 32, None, torch.float32, 40, 64, torch.Generator().manual_seed(0))
    out = w4a16_matmul(on_device(torch.zeros(0, 64)), packed, scales, group=32, codes="int4")
    assert out.shape == (0, 40)


# --- argument checks -------------------------------------------------------------------------

def _arguments():
    packed, scales, zeros = make_weight("uint4", 32, torch.float32, torch.float32, 40, 64,
                                        torch.Generator().manual_seed(1))
    return {"x": on_device(torch.zeros(3, 64)), "packed": packed, "scales": scales, "zero_points": zeros,
            "group": 32, "codes": "uint4"}


@pytest.mark.parametrize("change,error,name", [
    ({"packed": torch.zeros(40, 64, dtype=torch.uint8)}, ValueError, "packed"),  # unpacked: K, not K / 2
    ({"packed": torch.zeros(40, 32, dtype=torch.int8)}, TypeError, "packed"),
    ({"packed": torch.zeros(32, 40, dtype=torch.uint8).T}, ValueError, "packed"),  # not contiguous in K
    ({"scales": torch.ones(40, 4)}, ValueError, "scales"),
    ({"scales": torch.ones(40, 2, dtype=torch.int32)}, TypeError, "scales"),
    ({"zero_points": torch.zeros(39, 2)}, ValueError, "zero_points"),
    ({"codes": "int4"}, ValueError, "zero_points"),  # two's complement codes take no zero point
    ({"x": torch.zeros(3, 1, 64)}, ValueError, "x"),
    ({"x": torch.zeros(3, 64, dtype=torch.int32)}, TypeError, "x"),
    ({"x": torch.zeros(64, 3).T}, ValueError, "x"),
    ({"x": torch.zeros(3, 48)}, ValueError, "x"),  # K = 48 splits a 32-wide group
    ({"group": 48}, ValueError, "group"),
    ({"codes": "nf4"}, ValueError, "codes"),
])
def test_bad_arguments_fail_naming_the_argument(change, error, name):
    args = _arguments()
    args.update({key: on_device(v) if isinstance(v, torch.Tensor) else v for key, v in change.items()})
    with pytest.raises(error, match=f"^{name}: "):
        w4a16_matmul(args.pop("x"), args.pop("packed"), args.pop("scales"), args.pop("zero_points"), **args)


# --- CUDA graphs (GPU only) ------------------------------------------------------------------

@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs: run with BRECCIA_KERNEL_DEVICE=cuda on a GPU")
def test_w4a16_replays_from_a_cuda_graph():
    # A linear layer runs inside SGLang's captured decode step: the launch must not sync or
    # read tensor values on the host, and a replay with new inputs must match the reference.
    gen = torch.Generator().manual_seed(17)
    packed, scales, _ = make_weight("e2m1", 16, None, torch.uint8, 72, 160, gen)
    x = on_device(torch.zeros(4, 160, dtype=torch.float16))
    graph, out = captured(lambda: w4a16_matmul(x, packed, scales, group=16, codes="e2m1"))
    for _ in replays(graph, x, gen):
        assert_matches_reference(out, x, packed, scales, None, 16, "e2m1")
