"""The one-pass 4-bit dequantize (prefill-sized batches' weight) under TRITON_INTERPRET=1 (or
compiled on a GPU): bit for bit the emulated kernel's weight, breccia's dequantize rounded to
the dtype, for every code kind (two's complement INT4, unsigned with and without zero points,
NVFP4's E2M1 with E4M3 scale bytes, subnormal ones included), every group width, N and K that
end mid-tile, strided rows, and the GPU's tile run on CPU."""

from __future__ import annotations

import breccia
import pytest
import torch

from breccia_sglang.format import make_recipe
from breccia_sglang.integration.gemm.triton_w4a16 import code_kind
from breccia_sglang.kernels import launch
from breccia_sglang.kernels.gemm import dequantize_4bit, dequantized_4bit_linear
from breccia_sglang.kernels.gemm.reference import w4a16_weight
from breccia_sglang.weights.packing import served_codes

from .pool import DEVICE, assert_is_dense_matmul, captured, on_device, replays
from .test_dequantize import assert_same_bits
from .test_w4a16 import make_weight

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (codes, group, zero points, scale dtype, N, K): the interpreter's tile is 16 x 64. Groups 16 /
# 32 sit inside a K tile, 64 fills it, 128 spans two; N = 33 / 40 / 72 and K = 96 / 160 / 320
# end mid-tile (K = 96 with 64-wide groups: one whole tile, then half of one).
CASES = [
    ("int4", 32, None, torch.float32, 33, 96),
    ("int4", 128, None, torch.bfloat16, 40, 384),
    ("uint4", 64, None, torch.float16, 72, 192),
    ("uint4", 32, torch.float32, torch.float32, 40, 160),
    ("uint4", 128, torch.bfloat16, torch.float32, 33, 384),
    ("e2m1", 16, None, torch.uint8, 72, 160),
    ("e2m1", 16, None, torch.float32, 33, 80),
]


def expected(packed, scales, zeros, group, codes, dtype):
    """The emulated kernel's weight: (value - z) * s in fp32, rounded once to dtype."""
    return w4a16_weight(packed, scales, zeros, group=group, codes=codes).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("codes,group,zero_dtype,scale_dtype,n,k", CASES)
def test_dequantize_is_the_emulated_kernels_weight_bit_for_bit(codes, group, zero_dtype, scale_dtype, n, k, dtype):
    gen = torch.Generator().manual_seed(CASES.index((codes, group, zero_dtype, scale_dtype, n, k)))
    packed, scales, zeros = make_weight(codes, group, zero_dtype, scale_dtype, n, k, gen)
    out = dequantize_4bit(packed, scales, zeros, group=group, codes=codes, dtype=dtype)
    assert_same_bits(out, expected(packed, scales, zeros, group, codes, dtype))


@pytest.mark.parametrize("recipe", [make_recipe("int4", group_size=32), make_recipe("int4", group_size=64,
                                    symmetric=False), breccia.INT4Scaling(group_size=32, symmetric=True, signed=False),
                                    make_recipe("nvfp4")], ids=["int4", "int4-asym", "int4-unsigned", "nvfp4"])
def test_dequantize_matches_breccias_own_dequantize(recipe):
    # breccia's own ScaledTensors, cast by breccia, packed as a loaded layer holds them.
    st = breccia.cast(torch.randn(40, 192, generator=torch.Generator().manual_seed(7)) * 0.05, recipe)
    zeros = None if st.zero_point is None else on_device(st.zero_point)
    group = 16 if recipe.name == "nvfp4" else recipe.group_size
    out = dequantize_4bit(on_device(served_codes(st.data, recipe)), on_device(st.scale), zeros, group=group,
                          codes=code_kind(recipe, st.zero_point is not None), dtype=torch.bfloat16)
    assert_same_bits(out, breccia.dequantize(st).to(torch.bfloat16))


@pytest.mark.parametrize("codes,group,zero_dtype,scale_dtype,n,k", [
    ("e2m1", 16, None, torch.uint8, 33, 288),  # 16 groups to a 256-wide tile, K ends mid-tile
    ("uint4", 128, torch.float32, torch.float32, 72, 640),  # two groups a tile, the last half full
    ("int4", 64, None, torch.float32, 40, 192),  # one tile, three quarters full
])
def test_the_gpu_tile_gives_the_same_bits(codes, group, zero_dtype, scale_dtype, n, k, monkeypatch):
    # A GPU takes 32 x 256 tiles; run that tile here (a no-op on a GPU).
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    gen = torch.Generator().manual_seed(n + k)
    packed, scales, zeros = make_weight(codes, group, zero_dtype, scale_dtype, n, k, gen)
    out = dequantize_4bit(packed, scales, zeros, group=group, codes=codes, dtype=torch.float16)
    assert_same_bits(out, expected(packed, scales, zeros, group, codes, torch.float16))


def test_integer_e4m3_scale_decode_gives_the_same_bits(monkeypatch):
    # GPUs before sm_89 decode NVFP4's E4M3 scales with bit moves.
    monkeypatch.setattr(launch, "FORCE_INTEGER_FP8_DECODE", True)
    packed, scales, _ = make_weight("e2m1", 16, None, torch.uint8, 40, 96, torch.Generator().manual_seed(5))
    out = dequantize_4bit(packed, scales, group=16, codes="e2m1", dtype=torch.bfloat16)
    assert_same_bits(out, expected(packed, scales, None, 16, "e2m1", torch.bfloat16))


def test_strided_rows_in_and_out():
    # Rows of a wider buffer on both sides, scales and zero points through their strides (a
    # transposed copy): nothing outside the output view is written.
    gen = torch.Generator().manual_seed(3)
    wide, scales, zeros = make_weight("uint4", 32, torch.float32, torch.float32, 40, 256, gen)
    packed, scales, zeros = wide[:, :80], scales[:, :5].T.contiguous().T, zeros[:, :5].T.contiguous().T
    assert packed.stride(0) == 128 and scales.stride(1) == 40
    out_buffer = on_device(torch.full((40, 200), -1.0, dtype=torch.float16))
    out = dequantize_4bit(packed, scales, zeros, group=32, codes="uint4", dtype=torch.float16,
                          out=out_buffer[:, :160])
    assert out.data_ptr() == out_buffer.data_ptr()
    assert_same_bits(out, expected(packed, scales, zeros, 32, "uint4", torch.float16))
    assert (out_buffer[:, 160:] == -1).all()


def test_dequantized_4bit_linear_is_the_emulated_kernels_matmul():
    gen = torch.Generator().manual_seed(4)
    packed, scales, _ = make_weight("e2m1", 16, None, torch.uint8, 72, 160, gen)
    x = on_device(torch.randn(9, 160, generator=gen).to(torch.float16))
    want = torch.nn.functional.linear(x, expected(packed, scales, None, 16, "e2m1", torch.float16))
    assert torch.equal(dequantized_4bit_linear(x, packed, scales, group=16, codes="e2m1"), want)


@pytest.mark.parametrize("change,error,name", [
    ({"group": 48}, ValueError, "group"),
    ({"codes": "nf4"}, ValueError, "codes"),
    ({"codes": "int4"}, ValueError, "zero_points"),  # two's complement codes take no zero point
    ({"dtype": torch.int8}, TypeError, "dtype"),
    ({"packed": torch.zeros(40, 24, dtype=torch.uint8)}, ValueError, "packed"),  # K = 48 splits a group
    ({"packed": torch.zeros(40, 32, dtype=torch.int8)}, TypeError, "packed"),
    ({"scales": torch.ones(40, 4)}, ValueError, "scales"),
    ({"zero_points": torch.zeros(39, 2)}, ValueError, "zero_points"),
    ({"out": torch.empty(40, 64, dtype=torch.bfloat16)}, TypeError, "out"),
    ({"out": torch.empty(40, 32, dtype=torch.float16)}, ValueError, "out"),
])
def test_bad_arguments_are_refused_by_name(change, error, name):
    packed, scales, zeros = make_weight("uint4", 32, torch.float32, torch.float32, 40, 64,
                                        torch.Generator().manual_seed(1))
    args = {"packed": packed, "scales": scales, "zero_points": zeros, "group": 32, "codes": "uint4",
            "dtype": torch.float16, "out": None}
    args.update({key: on_device(v) if isinstance(v, torch.Tensor) else v for key, v in change.items()})
    with pytest.raises(error, match=f"^{name}: "):
        dequantize_4bit(args.pop("packed"), args.pop("scales"), args.pop("zero_points"), **args)


# --- CUDA graphs (GPU only) ------------------------------------------------------------------

@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs: run with BRECCIA_KERNEL_DEVICE=cuda on a GPU")
def test_the_4bit_prefill_route_replays_from_a_cuda_graph():
    # A batch past the route's bound may be a captured decode step: the pass and the matmul
    # must not sync or read values on the host.
    gen = torch.Generator().manual_seed(17)
    packed, scales, _ = make_weight("e2m1", 16, None, torch.uint8, 72, 1024, gen)
    x = on_device(torch.zeros(40, 1024, dtype=torch.bfloat16))
    graph, out = captured(lambda: dequantized_4bit_linear(x, packed, scales, group=16, codes="e2m1"))
    for _ in replays(graph, x, gen):
        assert_is_dense_matmul(out, x, expected(packed, scales, None, 16, "e2m1", torch.bfloat16))
