"""breccia's packed 4-bit weights in SGLang's layouts, dequantized by SGLang's own routines where
one runs on CPU, equal breccia.dequantize bit for bit: AWQ through ``awq_dequantize_triton``
(interpreted), GPTQ through SGLang's ``unpack_gptq_qweight`` and uint4b8's documented bias,
ModelOpt NVFP4 through SGLang's reference ``dequantize_nvfp4_to_dtype``. Shapes are awkward on
purpose (N = 40 or 200, not multiples of 64; K = 96 or 320), with merged layers and TP shards."""

from __future__ import annotations

import breccia
import pytest
import torch

from breccia_sglang.format import make_recipe
from breccia_sglang.weights.packing import pack_low_first
from breccia_sglang.weights.sglang_layouts import AwqInt4, to_awq, to_gptq, to_modelopt_nvfp4

INT4_KINDS = ("signed", "unsigned", "asymmetric")


def int4_recipe(kind: str, group_size: int):
    if kind == "unsigned":  # make_recipe ties signed to symmetric; this one is symmetric, unsigned
        return breccia.INT4Scaling(group_size=group_size, symmetric=True, signed=False)
    return make_recipe("int4", group_size=group_size, symmetric=kind == "signed")


def int4_weight(recipe, n: int, k: int, seed: int):
    """A breccia INT4 weight with a real cast's scales and zero points (rows of different
    magnitudes) and codes drawn uniformly, so every code sits in every nibble position."""
    gen = torch.Generator().manual_seed(seed)
    magnitudes = torch.logspace(-3, 1, n)[torch.randperm(n, generator=gen)][:, None]
    st = breccia.cast(torch.randn(n, k, generator=gen) * magnitudes, recipe)
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    return breccia.from_buffer(codes, st.scale, st.recipe, st.layout, st.zero_point)


def with_scale(st, scale):
    return breccia.from_buffer(st.data, scale, st.recipe, st.layout, st.zero_point)


def sliced(st, rows=slice(None), k=slice(None)):
    """A TP shard of a breccia INT4 weight: rows (N) and a K range on group boundaries."""
    g = st.recipe.group_size
    groups = slice(None if k.start is None else k.start // g, None if k.stop is None else k.stop // g)
    zp = None if st.zero_point is None else st.zero_point[rows, groups].contiguous()
    return breccia.from_buffer(st.data[rows, k].contiguous(), st.scale[rows, groups].contiguous(),
                               st.recipe, st.layout, zp)


def merged(shards):
    zp = None if shards[0].zero_point is None else torch.cat([s.zero_point for s in shards])
    return breccia.from_buffer(torch.cat([s.data for s in shards]), torch.cat([s.scale for s in shards]),
                               shards[0].recipe, shards[0].layout, zp)


def awq_of(st, dtype) -> AwqInt4:
    return to_awq(pack_low_first(st.data), st.scale, st.zero_point, st.recipe, dtype=dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns: -0.0 != 0.0 and every rounding counts."""
    ints = {4: torch.int32, 2: torch.int16}[a.element_size()]
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.contiguous().view(ints), b.contiguous().view(ints)))


# --- AWQ: SGLang's awq_dequantize_triton ----------------------------------------------------

def awq_dequantized(layout: AwqInt4) -> torch.Tensor:
    """(N, K) in the scales' dtype, as SGLang's AWQ Triton dequantize computes it. Its program
    reads one scale row per 32 K rows (BLOCK_SIZE_Y), so it needs G in {32, 64, 128} or K."""
    from sglang.kernels.ops.quantization.awq_triton import awq_dequantize_triton

    return awq_dequantize_triton(layout.qweight, layout.scales, layout.qzeros).T


def expected_in(st, dtype) -> torch.Tensor:
    """breccia.dequantize with the scale SGLang holds. In fp32 that is breccia's own scale. In
    fp16 the kernel computes (u - z) * s16 in fp16: u - z is a 4-bit integer and s16 has 11
    significant bits, so the product is exact in fp32 and the kernel's one rounding equals
    breccia's fp32 product (with s16 as its scale) rounded to fp16."""
    if dtype == torch.float32:
        return breccia.dequantize(st)
    return breccia.dequantize(with_scale(st, st.scale.to(dtype).float())).to(dtype)


@pytest.mark.parametrize("kind", INT4_KINDS)
@pytest.mark.parametrize("group_size, n, k, dtype", [
    (32, 40, 96, "float16"), (64, 200, 320, "float16"), (128, 56, 256, "float16"),
    (32, 40, 96, "float32"),  # fp32 scales: breccia's own, the layout alone is lossless
])
def test_awq_layout_dequantized_by_sglangs_triton_kernel_is_breccias(kind, group_size, n, k, dtype):
    dtype = getattr(torch, dtype)
    st = int4_weight(int4_recipe(kind, group_size), n, k, seed=n + k)
    layout = awq_of(st, dtype)
    assert layout.qweight.shape == (k, n // 8) and layout.qzeros.shape == (k // group_size, n // 8)
    assert layout.scales.shape == (k // group_size, n) and layout.scales.dtype == dtype
    assert same_bits(awq_dequantized(layout), expected_in(st, dtype))


@pytest.mark.parametrize("kind", ["signed", "asymmetric"])
def test_awq_of_a_merged_layer_is_its_shards_side_by_side(kind):
    recipe = int4_recipe(kind, 32)
    shards = [int4_weight(recipe, n, 96, seed=n) for n in (40, 24, 72)]  # q, k, v of different widths
    layout = awq_of(merged(shards), torch.float16)
    parts = [awq_of(s, torch.float16) for s in shards]
    for field in ("qweight", "qzeros", "scales"):  # SGLang's merged loader puts shards side by side in N
        assert torch.equal(getattr(layout, field), torch.cat([getattr(p, field) for p in parts], dim=1))
    assert same_bits(awq_dequantized(layout), torch.cat([expected_in(s, torch.float16) for s in shards]))


@pytest.mark.parametrize("kind", ["signed", "asymmetric"])
def test_awq_of_a_tp_shard_is_the_same_shard_of_the_full_layout(kind):
    group_size = 32
    st = int4_weight(int4_recipe(kind, group_size), 80, 192, seed=7)
    full = awq_of(st, torch.float16)
    k0, k1, n0, n1 = 64, 160, 16, 56  # K on group boundaries, N on whole int32 words
    row_parallel = awq_of(sliced(st, k=slice(k0, k1)), torch.float16)
    g0, g1 = k0 // group_size, k1 // group_size
    assert torch.equal(row_parallel.qweight, full.qweight[k0:k1])
    assert torch.equal(row_parallel.qzeros, full.qzeros[g0:g1])
    assert torch.equal(row_parallel.scales, full.scales[g0:g1])
    column_parallel = awq_of(sliced(st, rows=slice(n0, n1)), torch.float16)
    assert torch.equal(column_parallel.qweight, full.qweight[:, n0 // 8:n1 // 8])
    assert torch.equal(column_parallel.qzeros, full.qzeros[:, n0 // 8:n1 // 8])
    assert torch.equal(column_parallel.scales, full.scales[:, n0:n1])
    assert same_bits(awq_dequantized(row_parallel), expected_in(sliced(st, k=slice(k0, k1)), torch.float16))
    assert same_bits(awq_dequantized(column_parallel), expected_in(sliced(st, rows=slice(n0, n1)), torch.float16))
    # A loader hands over strided slices of the packed tensors themselves.
    packed, zp = pack_low_first(st.data), st.zero_point
    strided = to_awq(packed[:, k0 // 2:k1 // 2], st.scale[:, g0:g1], None if zp is None else zp[:, g0:g1],
                     st.recipe, dtype=torch.float16)
    assert torch.equal(strided.qweight, row_parallel.qweight) and torch.equal(strided.qzeros, row_parallel.qzeros)


def test_awq_refuses_n_that_is_not_whole_words():
    st = int4_weight(int4_recipe("signed", 32), 36, 64, seed=1)
    with pytest.raises(ValueError, match="multiple of 8"):
        awq_of(st, torch.float16)


@pytest.mark.parametrize("bad", [7.5, 16.0, float("nan")])
def test_a_zero_point_awq_cannot_pack_is_refused_naming_the_tensor(bad):
    st = int4_weight(int4_recipe("asymmetric", 32), 16, 64, seed=2)
    zero_point = st.zero_point.clone()
    zero_point[3, 1] = bad
    name = "model.layers.0.mlp.down_proj.weight"
    with pytest.raises(ValueError, match=rf"{name}.*0\.\.15"):
        to_awq(pack_low_first(st.data), st.scale, zero_point, st.recipe, dtype=torch.float16, name=name)


# --- GPTQ: SGLang's unpacker, uint4b8's documented bias --------------------------------------

def gptq_dequantized(layout) -> torch.Tensor:
    """(N, K) in the scales' dtype. SGLang has no GPTQ dequantize that runs on CPU (its GPTQ
    paths are Marlin, JIT CUDA), so this reference unpacks with SGLang's own XPU helper
    ``unpack_gptq_qweight`` and applies uint4b8 as sgl_kernel/scalar_type.py defines it
    (``ScalarType.uint(4, 8)``: value = u - 8), one rounding to the scales' dtype."""
    from sglang.srt.hardware_backend.xpu.quantization.int4pack_utils import unpack_gptq_qweight

    u = unpack_gptq_qweight(layout.qweight)  # (K, N)
    scales = layout.scales.float().repeat_interleave(layout.group_size, dim=0)
    return ((u - 8).float() * scales).to(layout.scales.dtype).T


@pytest.mark.parametrize("group_size, n, k", [(32, 20, 96), (64, 200, 320), (128, 40, 256)])
def test_gptq_layout_dequantized_is_breccias(group_size, n, k):
    recipe = int4_recipe("signed", group_size)
    st = int4_weight(recipe, n, k, seed=n * k)
    for dtype in (torch.float16, torch.float32):
        layout = to_gptq(pack_low_first(st.data), st.scale, None, recipe, dtype=dtype)
        assert layout.qweight.shape == (k // 8, n) and layout.scales.shape == (k // group_size, n)
        assert same_bits(gptq_dequantized(layout), expected_in(st, dtype))
    # A merged layer is its shards side by side; a TP shard is a K (rows of words) or N slice.
    shards = [int4_weight(recipe, width, k, seed=width) for width in (20, 12, 36)]
    layouts = [to_gptq(pack_low_first(s.data), s.scale, None, recipe, dtype=torch.float16) for s in shards]
    whole = merged(shards)
    merged_layout = to_gptq(pack_low_first(whole.data), whole.scale, None, recipe, dtype=torch.float16)
    assert torch.equal(merged_layout.qweight, torch.cat([p.qweight for p in layouts], dim=1))
    full = to_gptq(pack_low_first(st.data), st.scale, None, recipe, dtype=torch.float16)
    k0, k1 = group_size, 2 * group_size
    part = sliced(st, k=slice(k0, k1))
    row_parallel = to_gptq(pack_low_first(part.data), part.scale, None, recipe, dtype=torch.float16)
    assert torch.equal(row_parallel.qweight, full.qweight[k0 // 8:k1 // 8])
    assert torch.equal(row_parallel.scales, full.scales[k0 // group_size:k1 // group_size])
    assert same_bits(gptq_dequantized(row_parallel), expected_in(part, torch.float16))
    strided = to_gptq(pack_low_first(st.data)[:, k0 // 2:k1 // 2], st.scale[:, k0 // group_size:k1 // group_size],
                      None, recipe, dtype=torch.float16)
    assert torch.equal(strided.qweight, row_parallel.qweight)


@pytest.mark.parametrize("kind", ["unsigned", "asymmetric"])
def test_gptq_refuses_int4_that_needs_zero_points(kind):
    st = int4_weight(int4_recipe(kind, 32), 16, 64, seed=3)
    with pytest.raises(ValueError, match="use the AWQ layout"):
        to_gptq(pack_low_first(st.data), st.scale, st.zero_point, st.recipe, dtype=torch.float16)


# --- ModelOpt NVFP4: SGLang's reference dequantize -------------------------------------------

def nvfp4_dequantized(layout) -> torch.Tensor:
    """(N, K) fp32 by SGLang's own NVFP4 reference, ``sglang/test/quant_ref_utils.py::
    dequantize_nvfp4_to_dtype`` (its E2M1 table, times the E4M3 scale, divided by the global
    scale), given the ModelOpt parameters as ModelOptFp4LinearMethod reduces them
    (weight_scale_2.max()). It reads scales swizzled as the FP4 GEMMs do: ``swizzled`` below
    mirrors srt ``quantization/utils.py::swizzle_blockscale``, and SGLang's own
    ``convert_swizzled_to_linear`` must undo it. (srt's ``dequantization.dequantize_nvfp4``
    computes the same products from linear scales, but importing it costs ~10 s.)"""
    from sglang.test.quant_ref_utils import convert_swizzled_to_linear, dequantize_nvfp4_to_dtype

    n, k = layout.weight.shape[0], layout.weight.shape[1] * 2
    scale = swizzled(layout.weight_scale)
    assert torch.equal(convert_swizzled_to_linear(scale, n, k).view(torch.uint8), layout.weight_scale.view(torch.uint8))
    return dequantize_nvfp4_to_dtype(layout.weight, scale, layout.weight_scale_2.max(), torch.float32)


def swizzled(scale: torch.Tensor) -> torch.Tensor:
    """(N, K/16) -> the 128x4 tiles the FP4 GEMMs read, padded to (N up to 128, K/16 up to 4)."""
    rows, cols = -(-scale.shape[0] // 128) * 128, -(-scale.shape[1] // 4) * 4
    padded = torch.zeros(rows, cols, dtype=torch.uint8)
    padded[: scale.shape[0], : scale.shape[1]] = scale.view(torch.uint8)
    tiles = padded.reshape(rows // 128, 4, 32, cols // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.contiguous().reshape(rows, cols).view(torch.float8_e4m3fn)


def nvfp4_weights():
    """A cast whose small rows get subnormal E4M3 scales (breccia floors scales at 2^-9, code
    1), and every code with every non-NaN scale byte, subnormals and zero included."""
    recipe = make_recipe("nvfp4")
    gen = torch.Generator().manual_seed(0)
    magnitudes = torch.logspace(-2.6, 0, 48)[:, None]
    cast = breccia.cast(torch.randn(48, 80, generator=gen) * magnitudes, recipe)  # K / 16 = 5 blocks
    assert bool(((cast.scale >= 1) & (cast.scale < 8)).any()), "no subnormal E4M3 scale: the test lost its point"
    codes = torch.randint(0, 16, (127, 32), generator=gen, dtype=torch.uint8)
    scales = torch.arange(127, dtype=torch.uint8)[:, None].expand(127, 2).contiguous()  # 0x7F is NaN
    return [cast, breccia.from_buffer(codes, scales, recipe, cast.layout)]


def test_modelopt_nvfp4_dequantized_by_sglang_is_breccias_including_subnormal_scales():
    for st in nvfp4_weights():
        packed = pack_low_first(st.data)
        layout = to_modelopt_nvfp4(packed, st.scale)
        assert layout.weight is packed  # our packing is ModelOpt's: nothing to convert
        assert layout.weight_scale.untyped_storage().data_ptr() == st.scale.untyped_storage().data_ptr()
        assert layout.weight_scale_2.tolist() == [1.0]
        assert same_bits(nvfp4_dequantized(layout), breccia.dequantize(st))


def test_modelopt_nvfp4_merged_layers_and_tp_shards_slice_like_the_checkpoint():
    st = nvfp4_weights()[0]
    packed = pack_low_first(st.data)
    layout = to_modelopt_nvfp4(packed, st.scale, shards=3)
    assert layout.weight_scale_2.tolist() == [1.0, 1.0, 1.0]  # one per merged shard
    rows, k = slice(8, 40), slice(16, 64)  # N slice; K slice on 16-element blocks
    part = breccia.from_buffer(st.data[rows, k].contiguous(), st.scale[rows, 1:4].contiguous(), st.recipe, st.layout)
    shard = to_modelopt_nvfp4(pack_low_first(part.data), part.scale)
    assert torch.equal(shard.weight, layout.weight[rows, 8:32])
    assert torch.equal(shard.weight_scale.view(torch.uint8), layout.weight_scale.view(torch.uint8)[rows, 1:4])
    assert same_bits(nvfp4_dequantized(shard), breccia.dequantize(part))
