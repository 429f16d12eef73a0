"""The W8A16 FP8 dequant-GEMM under TRITON_INTERPRET=1 (or compiled on a GPU) against its fp32
reference: groups 16 to 256 (and 96) and one scale per row, every E4M3 code (subnormals and
NaN included), E8M0-sized scales (MXFP8), M = 1 / 7 / 33, N and K that are not multiples of the
tiles, and K split across programs."""

from __future__ import annotations

import pytest
import torch

from breccia_sglang import names
from breccia_sglang.kernels import launch
from breccia_sglang.kernels.gemm import tiling, tuned_configs, w8a16, w8a16_matmul
from breccia_sglang.kernels.gemm.reference import w8a16_reference, w8a16_weight
from breccia_sglang.kernels.gemm.tiling import TileConfig
from breccia_sglang.weights.codes import decode_e8m0

from .pool import DEVICE, captured, on_device, replays

# bf16 tl.dot is wrong under the interpreter; compiled on a GPU it is checked too.
X_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE != "cpu" else [])

# (group, scales, M, N, K). The interpreter's tile is 16 x 32 x 64: groups 16 / 32 sit inside a
# K tile, 64 fills it, 128 spans two; K = 96 / 160 end mid-tile, N = 40 / 72 mid-tile;
# M = 1 / 7 / 33 leave 15, 9 and 15 rows of the last M tile masked. "e8m0": MXFP8's scales,
# powers of two decoded from exponents. Every case but the 33-row ones splits K (tiling.py).
CASES = [
    (16, "fp32", 1, 40, 96),
    (32, "fp32", 7, 72, 160),
    (32, "e8m0", 1, 72, 96),
    (32, "e8m0", 33, 40, 192),
    (64, "fp32", 33, 72, 192),
    (64, "fp32", 1, 40, 384),
    (128, "fp32", 7, 40, 384),
    (None, "fp32", 1, 72, 160),
    (None, "fp32", 33, 40, 96),
    (96, "fp32", 7, 40, 192),  # a group that is no power of two: one group over 1.5 K tiles
    (256, "fp32", 1, 72, 512),
]


def make_weight(group, scale_kind: str, n: int, k: int, gen: torch.Generator, nan_codes: bool = False):
    """Random E4M3 codes (every code, NaN ones only when asked) and their fp32 scales."""
    codes = torch.randint(0, 256, (n, k), generator=gen, dtype=torch.uint8)
    codes.view(-1)[:256] = torch.arange(256, dtype=torch.uint8)  # every code, subnormals included
    if not nan_codes:
        codes[(codes & 0x7F) == 0x7F] = 0x7E
    columns = 1 if group is None else k // group
    if scale_kind == "e8m0":  # 2^-10 .. 2^-3, as MXFP8 stores them
        scales = decode_e8m0(torch.randint(117, 125, (n, columns), generator=gen, dtype=torch.uint8))
    else:  # amax / 448 for weights of magnitude 0.5 .. 3
        scales = torch.rand(n, columns, generator=gen) * 0.006 + 0.001
    return on_device(codes.view(torch.float8_e4m3fn)), on_device(scales)


def assert_matches_reference(out, x, weight, scales, group):
    ref = w8a16_reference(x, weight, scales, group=group)
    magnitude = x.float().abs() @ w8a16_weight(weight, scales, group=group).abs().T  # bounds every partial sum
    # fp32 x: the same products summed in another order, tile by tile and split by split: fewer
    # than (BLOCK_K + K / BLOCK_K + splits) fp32 roundings of 2^-24 along any output, < 1e-5 of
    # the magnitude for K <= 384. fp16 / bf16 x (exact in fp32, so the reference sees the same
    # x): the kernel rounds each dequantized weight once (2^-11 / 2^-8 relative) and the output
    # once (|out| <= magnitude), so at most twice that of the magnitude, plus the fp32 sum. The
    # absolute term covers weights that round to fp16 subnormals (absolute error 2^-25 each).
    unit = {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[x.dtype]
    tiny = 2.0**-25 * x.float().abs().sum(dim=1, keepdim=True)
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    excess = (out.float() - ref).abs() - ((2 * unit + 1e-5) * magnitude + tiny)
    assert excess.max().item() <= 0, (out.float() - ref).abs().max().item()


@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("group,scale_kind,m,n,k", CASES)
def test_w8a16_matches_fp32_reference(group, scale_kind, m, n, k, x_dtype):
    gen = torch.Generator().manual_seed(CASES.index((group, scale_kind, m, n, k)) * 100 + m)
    weight, scales = make_weight(group, scale_kind, n, k, gen)
    x = on_device(torch.randn(m, k, generator=gen).to(x_dtype))
    out = w8a16_matmul(x, weight, scales, group=group)
    assert_matches_reference(out, x, weight, scales, group)


@pytest.mark.parametrize("group", [None, 64, 128])
def test_bf16_rows_past_fp16s_range_keep_their_values(group):
    # Where one scale per row covers the K tile (per row, groups of 64 and 128 against the
    # interpreter's 64-wide K tile) the codes meet the activations in an fp16 dot, bf16 ones too
    # (so this runs under the interpreter, whose bf16 dot is broken): a row holding values fp16
    # cannot (up to ~3e6 here, fp16 ends at 65504) is scaled by a power of two first. Without
    # that it would come out inf.
    gen = torch.Generator().manual_seed(11)
    weight, scales = make_weight(group, "fp32", 40, 256, gen)
    x = torch.randn(5, 256, generator=gen)
    x[0] *= 1e6
    x[1, 7] = 70000.0  # one value past fp16's range in an otherwise ordinary row
    x[2] *= 1e-3  # small values stay exact (fp16 normals)
    x[3, :64] = 40000.0  # one K tile past 2^15, the next ones ordinary
    x = on_device(x.to(torch.bfloat16))
    assert_matches_reference(w8a16_matmul(x, weight, scales, group=group), x, weight, scales, group)


@pytest.mark.parametrize("group,m,n,k,x_dtype", [
    (32, 1, 40, 640, torch.float16),  # 16 x 64 x 128: 4 groups a K tile, K split 5 ways
    (128, 33, 72, 384, torch.float16),  # 64 x 128 x 64: a group spans two K tiles
    (None, 300, 40, 256, torch.float16),  # 128 x 128 x 64
    (16, 33, 72, 80, torch.float32),  # fp32's 32 x 64 x 32: K ends mid-tile
])
def test_gpu_tile_sizes_match_the_reference_too(group, m, n, k, x_dtype, monkeypatch):
    # A GPU takes the tile configs of TILE_CONFIGS by M (FP32_CONFIG for fp32 x); run them
    # here (a no-op on a GPU).
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    gen = torch.Generator().manual_seed(m + n + k)
    weight, scales = make_weight(group, "fp32", n, k, gen)
    x = on_device(torch.randn(m, k, generator=gen).to(x_dtype))
    assert_matches_reference(w8a16_matmul(x, weight, scales, group=group), x, weight, scales, group)


def test_a_config_tuned_for_a_gpu_model_launches_right(tmp_path, monkeypatch):
    # A tuned table (tuned_configs.py) replaces the built-in config by M: 16 x 128 x 128 at M = 3
    # leaves 56 of the tile's columns masked at N = 72 and holds four 32-wide groups a K tile.
    tuned = TileConfig(16, 128, 128, 1, 4, 4, programs_per_sm=2)
    path = tmp_path / "weight_only_Some_GPU.json"
    tuned_configs.write_tables(path, {"w8a16": [(4, tuned)]}, device="Some GPU")
    monkeypatch.setenv(names.ENV_WEIGHT_ONLY_CONFIGS, str(path))
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    gen = torch.Generator().manual_seed(5)
    weight, scales = make_weight(32, "fp32", 72, 384, gen)
    x = on_device(torch.randn(3, 384, generator=gen).to(torch.float16))
    assert w8a16.choose_config(3, x) == tuned
    assert_matches_reference(w8a16_matmul(x, weight, scales, group=32), x, weight, scales, 32)


def test_the_cases_split_k_and_the_split_sum_is_what_one_program_computes(monkeypatch):
    # The cases above are only a test of the split if they split: check that they do, and that
    # a launch made to take one program per tile gives the same fp32 result up to summation order.
    gen = torch.Generator().manual_seed(3)
    weight, scales = make_weight(32, "fp32", 72, 160, gen)
    x = on_device(torch.randn(7, 160, generator=gen))
    config = w8a16.choose_config(7, x)
    assert tiling.split_k_for(7, 72, 160, config, x.device).splits > 1
    split = w8a16_matmul(x, weight, scales, group=32)
    monkeypatch.setattr(tiling, "INTERPRETER_PROGRAMS", 1)
    monkeypatch.setattr(tiling, "PROGRAMS_PER_SM", 0)
    assert tiling.split_k_for(7, 72, 160, config, x.device).splits == 1
    whole = w8a16_matmul(x, weight, scales, group=32)
    # fp32 sums of the same products in another order: a few roundings of 2^-24 per output.
    scale = max(1.0, whole.abs().max().item())
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("group", [64, None])  # decoded to fp32 and scaled; the fp16 dot scaled after
@pytest.mark.parametrize("decode", ["bits"] + (["native", "ptx"] if DEVICE == "cuda" else []))
def test_nan_codes_come_out_nan_as_breccia_decodes_them(decode, group, monkeypatch):
    # The hardware conversion (sm_89+) and the elementwise bit moves decode 0x7F / 0xFF as NaN;
    # the PTX bit moves of sm_80-86 read them as +-480, as the interpreter's float8e4nv does
    # (breccia never writes them), so there every output stays finite. On CPU only the
    # elementwise bit moves run.
    monkeypatch.setattr(launch, "FORCE_INTEGER_FP8_DECODE", decode != "native")
    monkeypatch.setenv(names.ENV_PTX, "1" if decode == "ptx" else "0")
    gen = torch.Generator().manual_seed(8)
    weight, scales = make_weight(group, "fp32", 40, 128, gen, nan_codes=True)
    x = on_device(torch.randn(3, 128, generator=gen).to(torch.float16))
    out = w8a16_matmul(x, weight, scales, group=group)
    nan_rows = ((weight.view(torch.uint8) & 0x7F) == 0x7F).any(dim=1)
    assert nan_rows.any() and not nan_rows.all()
    assert not out.isnan()[:, ~nan_rows].any()
    if decode == "ptx":
        assert torch.isfinite(out).all()
    else:
        assert out.isnan()[:, nan_rows].all()


def test_integer_e4m3_decode_equals_the_native_one(monkeypatch):
    # GPUs before sm_89 decode the codes with bit moves; both decodes give every code the same value.
    gen = torch.Generator().manual_seed(5)
    weight, scales = make_weight(32, "e8m0", 40, 256, gen)
    x = on_device(torch.randn(7, 256, generator=gen).to(torch.float16))
    monkeypatch.setattr(launch, "FORCE_INTEGER_FP8_DECODE", True)
    integer = w8a16_matmul(x, weight.view(torch.uint8), scales, group=32)
    assert_matches_reference(integer, x, weight, scales, 32)
    if launch.native_fp8_on(torch.device(DEVICE)):
        monkeypatch.setattr(launch, "FORCE_INTEGER_FP8_DECODE", False)
        assert torch.equal(integer, w8a16_matmul(x, weight, scales, group=32))


def test_strided_x_and_scales_are_read_through_their_strides():
    # SGLang may hand over a slice of a wider activation buffer; scales may be a transposed copy.
    gen = torch.Generator().manual_seed(21)
    weight, scales = make_weight(32, "fp32", 40, 96, gen)
    x = on_device(torch.randn(7, 128, generator=gen))[:, :96]
    scales = scales.T.contiguous().T
    assert x.stride(0) == 128 and scales.stride(1) == 40
    assert_matches_reference(w8a16_matmul(x, weight, scales, group=32), x, weight, scales, 32)


def test_an_empty_batch_gives_an_empty_output():
    weight, scales = make_weight(32, "fp32", 40, 64, torch.Generator().manual_seed(0))
    assert w8a16_matmul(on_device(torch.zeros(0, 64)), weight, scales, group=32).shape == (0, 40)


# --- argument checks -------------------------------------------------------------------------

def _arguments():
    weight, scales = make_weight(32, "fp32", 40, 64, torch.Generator().manual_seed(1))
    return {"x": on_device(torch.zeros(3, 64)), "weight": weight, "scales": scales, "group": 32}


@pytest.mark.parametrize("change,error,name", [
    ({"weight": torch.zeros(40, 32, dtype=torch.uint8)}, ValueError, "weight"),  # K / 2: packed 4-bit
    ({"weight": torch.zeros(40, 64, dtype=torch.int8)}, TypeError, "weight"),
    ({"weight": torch.zeros(64, 40, dtype=torch.uint8).T}, ValueError, "weight"),  # not contiguous in K
    ({"scales": torch.ones(40, 4)}, ValueError, "scales"),
    ({"scales": torch.ones(40, 2, dtype=torch.uint8)}, TypeError, "scales"),  # E8M0 bytes: decode first
    ({"scales": torch.ones(40, 2), "group": None}, ValueError, "scales"),
    ({"x": torch.zeros(3, 1, 64)}, ValueError, "x"),
    ({"x": torch.zeros(3, 64, dtype=torch.int32)}, TypeError, "x"),
    ({"x": torch.zeros(64, 3).T}, ValueError, "x"),
    ({"x": torch.zeros(3, 48)}, ValueError, "x"),  # K = 48 splits a 32-wide group
    ({"group": 0}, ValueError, "group"),
])
def test_bad_arguments_fail_naming_the_argument(change, error, name):
    args = _arguments()
    args.update({key: on_device(v) if isinstance(v, torch.Tensor) else v for key, v in change.items()})
    with pytest.raises(error, match=f"^{name}: "):
        w8a16_matmul(args.pop("x"), args.pop("weight"), args.pop("scales"), **args)


# --- CUDA graphs (GPU only) ------------------------------------------------------------------

@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs: run with BRECCIA_KERNEL_DEVICE=cuda on a GPU")
def test_w8a16_replays_from_a_cuda_graph():
    # A linear layer runs inside SGLang's captured decode step: the launch (split K and its sum
    # included) must not sync or read tensor values on the host, and a replay with new inputs
    # must match the reference.
    gen = torch.Generator().manual_seed(17)
    weight, scales = make_weight(128, "fp32", 72, 1024, gen)
    x = on_device(torch.zeros(4, 1024, dtype=torch.bfloat16))
    assert tiling.split_k_for(4, 72, 1024, w8a16.choose_config(4, x), x.device).splits > 1
    graph, out = captured(lambda: w8a16_matmul(x, weight, scales, group=128))
    for _ in replays(graph, x, gen):
        assert_matches_reference(out, x, weight, scales, 128)
