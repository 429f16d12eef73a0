"""breccia's dequantize in plain torch: bit for bit breccia's own for every code of every
recipe, the same values in an activation dtype without an fp32 copy, and no NumPy anywhere."""

from __future__ import annotations

import breccia
import numpy as np
import pytest
import torch
from breccia._formats import _E2M1_LUT, _E4M3_LUT, _E5M2_LUT  # breccia's own tables, the reference
from breccia.kernels.reference._utils import dequantize_e8m0_scale

from breccia_sglang.format import make_recipe
from breccia_sglang.weights import dequantize, dequantize_as
from breccia_sglang.weights.codes import decode_e2m1, decode_e8m0, decode_fp8, decode_int4
from breccia_sglang.weights.packing import served_codes

ALL_CODES = torch.arange(256, dtype=torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (so -0.0 != 0.0 and every rounding counts), NaN where the other is NaN.
    NaN payloads differ (torch's conversion keeps the sign, breccia's table has one NaN); only
    a broken checkpoint holds E4M3's NaN codes, and it gets NaN either way."""
    ints = {4: torch.int32, 2: torch.int16}[a.element_size()]
    nan = a.isnan()
    return (a.dtype == b.dtype and a.shape == b.shape and torch.equal(nan, b.isnan())
            and torch.equal(a.view(ints)[~nan], b.view(ints)[~nan]))


@pytest.mark.parametrize("fmt, table", [("E4M3", _E4M3_LUT), ("E5M2", _E5M2_LUT)])
def test_fp8_codes_decode_to_breccias_table_values(fmt, table):
    assert same_bits(decode_fp8(ALL_CODES, fmt), torch.from_numpy(table))


def test_e2m1_e8m0_and_int4_codes_decode_to_breccias_values():
    assert same_bits(decode_e2m1(ALL_CODES), torch.from_numpy(_E2M1_LUT[ALL_CODES.numpy() & 0x0F]))
    with np.errstate(over="ignore"):  # E8M0 255 is 2^128: inf in fp32, for breccia as for us
        expected = torch.from_numpy(dequantize_e8m0_scale(ALL_CODES.numpy()))
    assert same_bits(decode_e8m0(ALL_CODES), expected)
    assert decode_e8m0(torch.tensor([0], dtype=torch.uint8)).item() == 2.0**-127  # an fp32 subnormal
    from breccia._formats import decode_int4 as breccia_int4

    for signed in (True, False):
        assert same_bits(decode_int4(ALL_CODES, signed), torch.from_numpy(breccia_int4(ALL_CODES.numpy(), signed)))


RECIPES = {
    "fp8": dict(name="fp8"), "fp8-delayed": dict(name="fp8-delayed"),
    "fp8-block-32": dict(name="fp8-block", block_k=32), "mxfp8": dict(name="mxfp8"), "nvfp4": dict(name="nvfp4"),
    "int4-g32": dict(name="int4", group_size=32), "int4-g64-unsigned": dict(name="int4", group_size=64),
    "int4-g32-asym": dict(name="int4", group_size=32, symmetric=False),
}


def every_code_weight(recipe, gen):
    """A breccia weight whose codes cover every byte value (256 columns in each row, shuffled),
    with scales and zero points drawn like a real cast's."""
    st = breccia.cast(torch.randn(24, 256, generator=gen) * 4, recipe)
    codes = torch.stack([torch.randperm(256, generator=gen) for _ in range(24)]).to(torch.uint8)
    if recipe.name == "int4" and not recipe.signed:
        codes &= 0x0F  # unsigned INT4 stores 0..15
    data = codes.view(torch.float8_e4m3fn) if st.data.dtype == torch.float8_e4m3fn else codes
    return breccia.from_buffer(data, st.scale, st.recipe, st.layout, st.zero_point)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_dequantize_is_breccias_bit_for_bit_for_every_code(recipe):
    params = dict(RECIPES[recipe])
    r = make_recipe(params.pop("name"), **params)
    st = every_code_weight(r, torch.Generator().manual_seed(len(recipe)))
    expected = breccia.dequantize(st)
    data = served_codes(st.data, st.recipe)  # NVFP4 / INT4: packed two per byte, as served
    got = dequantize(data, st.scale, st.recipe, st.layout, st.zero_point)
    assert same_bits(got, expected)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        # The emulated kernel's weight: the same values, rounded once to the activation dtype.
        assert same_bits(dequantize_as(data, st.scale, st.recipe, st.layout, st.zero_point, dtype=dtype),
                         expected.to(dtype))


def test_merged_per_tensor_shards_keep_their_own_scales():
    # qkv_proj of uneven shards, one per-tensor scale each (as SGLang holds a merged FP8 layer).
    gen = torch.Generator().manual_seed(3)
    shards = [breccia.cast(torch.randn(rows, 64, generator=gen) * s, make_recipe("fp8"))
              for rows, s in ((48, 1.0), (16, 30.0), (16, 0.01))]
    data = torch.cat([s.data for s in shards])
    scale = torch.stack([s.scale for s in shards])
    expected = torch.cat([breccia.dequantize(s) for s in shards])
    recipe, layout = shards[0].recipe, shards[0].layout
    assert same_bits(dequantize(data, scale, recipe, layout, shard_widths=(48, 16, 16)), expected)
    assert same_bits(dequantize_as(data, scale, recipe, layout, dtype=torch.bfloat16, shard_widths=(48, 16, 16)),
                     expected.to(torch.bfloat16))
    with pytest.raises(ValueError, match="3 per-shard scales need shard widths summing to 80"):
        dequantize(data, scale, recipe, layout, shard_widths=(48, 16))


@pytest.mark.parametrize("recipe", ["mxfp8", "nvfp4", "int4-g32-asym"])
def test_dequantize_makes_no_numpy_call(recipe, monkeypatch):
    # breccia 0.1.3 dequantizes MXFP8, NVFP4 and INT4 through NumPy (a device-to-host round trip
    # per layer per forward on a GPU). Ours must not touch NumPy at all on the forward path.
    params = dict(RECIPES[recipe])
    st = breccia.cast(torch.randn(8, 64), make_recipe(params.pop("name"), **params))

    def numpy_was_called(*args, **kwargs):
        raise AssertionError("NumPy was called")

    monkeypatch.setattr(torch.Tensor, "numpy", numpy_was_called)
    monkeypatch.setattr(torch, "from_numpy", numpy_was_called)
    monkeypatch.setattr(torch, "as_tensor", numpy_was_called)
    data = served_codes(st.data, st.recipe)
    for dtype in (None, torch.bfloat16):
        if dtype is None:
            dequantize(data, st.scale, st.recipe, st.layout, st.zero_point)
        else:
            dequantize_as(data, st.scale, st.recipe, st.layout, st.zero_point, dtype=dtype)
    with pytest.raises(AssertionError, match="NumPy was called"):  # the patch would catch breccia's path
        breccia.dequantize(st)
