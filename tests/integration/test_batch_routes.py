"""The batch routes of the FP8 and 4-bit kernels: decode-sized batches on our W8A16 kernel up to
the M a GPU model's tuned file (or BRECCIA_SGLANG_W8A16_UP_TO_M) gives, prefill-sized ones on the
weight dequantized in one pass from the M it gives per scale group or 4-bit recipe (or
BRECCIA_SGLANG_DEQUANTIZE_FROM_M), and only those; reading the weight and scales as each kernel
holds them (the Hopper kernel's MN-major scales, SGLang's per-tensor layout, packed 4-bit codes).
Under TRITON_INTERPRET=1, every path real."""

from __future__ import annotations

import json
import logging

import breccia
import pytest
import torch

from breccia_sglang import names
from breccia_sglang.errors import BrecciaConfigError
from breccia_sglang.format import make_recipe
from breccia_sglang.integration.gemm import LinearSpec
from breccia_sglang.integration.gemm import block_fp8_tiles as tiles
from breccia_sglang.integration.gemm import blockscale_sm90 as hopper
from breccia_sglang.integration.gemm.triton_block_fp8 import TritonBlockFp8Kernel
from breccia_sglang.kernels.gemm import w8a16_matmul
from breccia_sglang.kernels.gemm.reference import w8a16_weight

N, K = 72, 256


def loaded(kernel, block: int, gen: torch.Generator, monkeypatch, up_to_m: str | None,
           from_m: str | None = None) -> torch.nn.Module:
    """A layer as ``kernel`` holds it after loading, with the variables set to ``up_to_m`` and
    ``from_m`` (None: unset)."""
    for variable, value in ((names.ENV_W8A16_UP_TO_M, up_to_m), (names.ENV_DEQUANTIZE_FROM_M, from_m)):
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, value)
    st = breccia.cast(torch.randn(N, K, generator=gen), make_recipe("fp8-block", block_k=block))
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(st.data.view(torch.float8_e4m3fn), requires_grad=False)
    layer.weight_scale = torch.nn.Parameter(st.scale.clone(), requires_grad=False)
    kernel.process_weights_after_loading(layer)
    return layer


def triton_kernel(block: int) -> TritonBlockFp8Kernel:
    st = breccia.cast(torch.zeros(N, K), make_recipe("fp8-block", block_k=block))
    spec = LinearSpec("layer", st.recipe, st.layout, K, (N,), torch.float16, "cpu", None,
                      forced=names.GEMM_TRITON_BLOCK_FP8, interpreted=True)
    return TritonBlockFp8Kernel().configure(spec)


def test_batches_up_to_the_bound_take_w8a16_and_larger_ones_w8a8(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    kernel = triton_kernel(64)
    layer = loaded(kernel, 64, gen, monkeypatch, "8")
    small, large = torch.randn(7, K, generator=gen).half(), torch.randn(33, K, generator=gen).half()
    assert torch.equal(kernel.apply(layer, small, None), w8a16_matmul(small, layer.weight, layer.weight_scale, group=64))
    routed_large = kernel.apply(layer, large, None)
    # The same layer without the bound: every batch on W8A8 (different from W8A16 by the
    # activations' FP8 rounding, so the equalities below could not hold by accident).
    monkeypatch.setenv(names.ENV_W8A16_UP_TO_M, "0")
    kernel.process_weights_after_loading(layer)
    assert torch.equal(routed_large, kernel.apply(layer, large, None))
    assert not torch.equal(kernel.apply(layer, small, None), w8a16_matmul(small, layer.weight, layer.weight_scale,
                                                                        group=64))


def test_the_hopper_kernel_routes_with_its_mn_major_scales(monkeypatch):
    # blockscale-sm90 converts its scales to MN-major strides once after loading; both routes read
    # them through their strides. (Its own W8A8 path needs a Hopper: every batch here is routed.)
    gen = torch.Generator().manual_seed(1)
    monkeypatch.setattr(hopper, "flashinfer_gemm", lambda: None)
    monkeypatch.setattr(hopper, "torch_has_blockwise", lambda: True)
    monkeypatch.setattr(hopper, "torch_blockwise_linear", lambda *args: pytest.fail("W8A8 for a routed batch"))
    kernel = hopper.BlockscaleSm90Kernel()
    layer = loaded(kernel, 128, gen, monkeypatch, "16", "17")
    assert layer.weight_scale.stride() == (1, N)
    scales = layer.weight_scale.contiguous()
    x = torch.randn(16, K, generator=gen).half()
    expected = w8a16_matmul(x, layer.weight, scales, group=128)
    assert torch.equal(kernel.apply(layer, x.view(2, 8, K), None), expected.view(2, 8, N))
    x = torch.randn(40, K, generator=gen).half()
    assert torch.equal(kernel.apply(layer, x, None), emulated(x, layer.weight, scales, 128))


def test_the_bound_comes_from_the_tuned_file_and_the_variable_overrides_it(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(names.ENV_W8A16_UP_TO_M, raising=False)
    monkeypatch.delenv(names.ENV_BLOCK_FP8_CONFIGS, raising=False)
    assert tiles.w8a16_up_to_m("NVIDIA H200") == 0  # not measured yet: the shipped table says nothing
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"w8a16_up_to_m": 16, "blocks": {}}))
    monkeypatch.setenv(names.ENV_BLOCK_FP8_CONFIGS, str(path))
    assert tiles.w8a16_up_to_m(None) == 16
    monkeypatch.setenv(names.ENV_W8A16_UP_TO_M, "4")
    assert tiles.w8a16_up_to_m(None) == 4
    with caplog.at_level(logging.INFO):
        loaded(triton_kernel(32), 32, torch.Generator().manual_seed(2), monkeypatch, "12")
    assert "triton-block-fp8 runs batches of up to 12 tokens on triton-w8a16" in caplog.text
    with caplog.at_level(logging.INFO):
        loaded(triton_kernel(64), 64, torch.Generator().manual_seed(2), monkeypatch, None, "300")
    assert "triton-block-fp8 runs batches of 300 tokens or more on its weight dequantized" in caplog.text


@pytest.mark.parametrize("value", ["16.5", "-1", '"16"', "true"])
def test_a_bad_bound_in_a_tuned_file_is_refused_naming_the_file(tmp_path, monkeypatch, value):
    monkeypatch.delenv(names.ENV_W8A16_UP_TO_M, raising=False)
    path = tmp_path / f"bad{len(value)}.json"
    path.write_text(f'{{"w8a16_up_to_m": {value}, "blocks": {{}}}}')
    monkeypatch.setenv(names.ENV_BLOCK_FP8_CONFIGS, str(path))
    with pytest.raises(BrecciaConfigError, match=f"{path}: w8a16_up_to_m must be a number of rows"):
        tiles.w8a16_up_to_m(None)


def test_a_bad_variable_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv(names.ENV_W8A16_UP_TO_M, "all")
    with pytest.raises(BrecciaConfigError, match=f"{names.ENV_W8A16_UP_TO_M}='all'"):
        tiles.w8a16_up_to_m(None)


@pytest.mark.parametrize("cutlass", [True, False])
def test_sglangs_per_tensor_linear_routes_reading_its_layout_in_place(monkeypatch, cutlass):
    # SGLang's Fp8LinearMethod holds the loaded (N, K) codes as a (K, N) view, with one scale per
    # channel (cutlass, on a full install: each shard's, exactly) or one requantized max scale
    # (torch's _scaled_mm; its CUDA requantization cannot run here, so that layout is made by hand).
    from breccia_sglang.format import make_recipe as recipe_named
    from breccia_sglang.integration.gemm.sglang_fp8 import SglangFp8PerTensorKernel

    monkeypatch.setenv(names.ENV_W8A16_UP_TO_M, "16")
    gen = torch.Generator().manual_seed(3)
    shards = [breccia.cast(torch.randn(rows, K, generator=gen) * (i + 1), recipe_named("fp8"))
              for i, rows in enumerate((48, 16, 16))]
    kernel, layer = SglangFp8PerTensorKernel(), torch.nn.Module()
    kernel.create_weights(layer, LinearSpec("qkv_proj", shards[0].recipe, shards[0].layout, K, (48, 16, 16),
                                            torch.float16, "cpu", None), None)
    layer.weight.data.copy_(torch.cat([s.data for s in shards]).view(torch.float8_e4m3fn))
    layer.weight_scale.data.copy_(torch.stack([s.scale.reshape(()) for s in shards]))
    layer.logical_widths = [48, 16, 16]
    if cutlass:
        kernel.native.cutlass_fp8_supported = True
        kernel.process_weights_after_loading(layer)
        expected_weight = torch.cat([breccia.dequantize(s) for s in shards])  # exactly breccia's
    else:
        top = layer.weight_scale.data.max()
        requantized = (layer.weight.data.float() * torch.cat([s.scale.expand(s.data.shape[0]) for s in shards])[:, None]
                       / top).to(torch.float8_e4m3fn)

        def requantize_with_max_scale(layer):  # what SGLang's process does there, without its CUDA kernel
            layer.weight = torch.nn.Parameter(requantized.t(), requires_grad=False)
            layer.weight_scale = torch.nn.Parameter(top.reshape(1), requires_grad=False)
        kernel.native.process_weights_after_loading = requantize_with_max_scale
        kernel.process_weights_after_loading(layer)
        expected_weight = requantized.float() * top
    assert layer.weight.shape == (K, 80) and kernel.w8a16_up_to_m == 16
    x, bias = torch.randn(2, 5, K, generator=gen).half(), torch.randn(80, generator=gen).half()
    out = kernel.apply(layer, x, bias)
    reference = x.float() @ expected_weight.T + bias.float()
    # fp16 weights, output and bias add: 2^-9 of the magnitude covers the three roundings.
    magnitude = x.float().abs() @ expected_weight.abs().T + bias.float().abs()
    assert out.shape == (2, 5, 80) and ((out.float() - reference).abs() <= 2.0**-9 * magnitude + 1e-3).all()
    # Above the bound the layer is SGLang's again, up to the prefill route's bound, from which
    # the weight is dequantized from the same layout (one scale per row, or the max broadcast).
    kernel.native.apply = lambda layer, x, bias: "sglang"
    assert kernel.apply(layer, torch.zeros(17, K).half(), None) == "sglang"
    monkeypatch.setenv(names.ENV_DEQUANTIZE_FROM_M, "18")
    kernel.route_batches(layer, None)
    assert kernel.apply(layer, torch.zeros(17, K).half(), None) == "sglang"
    x = torch.randn(18, K, generator=gen).half()
    assert torch.equal(kernel.apply(layer, x, None),
                       torch.nn.functional.linear(x, expected_weight.half()))  # the same products, rounded once


def emulated(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """The emulated kernel's result: breccia's dequantized weight rounded to x's dtype, then the matmul."""
    return torch.nn.functional.linear(x, w8a16_weight(weight, scales, group=group).to(x.dtype))


def test_batches_from_the_bound_take_the_dequantized_weight_and_smaller_ones_w8a8(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    kernel = triton_kernel(32)
    layer = loaded(kernel, 32, gen, monkeypatch, None, "33")
    small, large = torch.randn(32, K, generator=gen).half(), torch.randn(33, K, generator=gen).half()
    # From the bound: bit for bit the emulated kernel (the same weight bits, the same matmul).
    assert torch.equal(kernel.apply(layer, large, None), emulated(large, layer.weight, layer.weight_scale, 32))
    # Below it, W8A8 (its FP8 activations make it differ from the emulated kernel).
    on_w8a8 = kernel.apply(layer, small, None)
    assert not torch.equal(on_w8a8, emulated(small, layer.weight, layer.weight_scale, 32))
    monkeypatch.setenv(names.ENV_DEQUANTIZE_FROM_M, "0")  # 0: never
    kernel.process_weights_after_loading(layer)
    assert torch.equal(on_w8a8, kernel.apply(layer, small, None))
    assert not torch.equal(kernel.apply(layer, large, None), emulated(large, layer.weight, layer.weight_scale, 32))


def test_both_routes_at_once_leave_the_middle_to_the_kernel(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    kernel = triton_kernel(64)
    layer = loaded(kernel, 64, gen, monkeypatch, "4", "20")
    w, s = layer.weight, layer.weight_scale
    for m, route in ((4, "w8a16"), (5, "w8a8"), (19, "w8a8"), (20, "dequantized")):
        x = torch.randn(m, K, generator=gen).half()
        out = kernel.apply(layer, x, None)
        assert torch.equal(out, w8a16_matmul(x, w, s, group=64)) == (route == "w8a16"), m
        assert torch.equal(out, emulated(x, w, s, 64)) == (route == "dequantized"), m


@pytest.mark.parametrize("recipe", ["fp8", "fp8-block-64", "mxfp8"])
def test_the_w8a16_kernel_dequantizes_every_fp8_recipe_as_the_emulated_kernel(recipe, monkeypatch):
    # A merged qkv (three shards, per-tensor with a scale each) on triton-w8a16, prefill-sized
    # batches routed: the emulated kernel's output bit for bit, on its own copy of the layer.
    from breccia_sglang.integration.gemm.emulated import EmulatedDequantKernel
    from breccia_sglang.integration.gemm.triton_w8a16 import TritonW8A16Kernel

    from .test_gemm_emulated import RECIPES, SHARDS, merged_layer

    monkeypatch.setenv(names.ENV_DEQUANTIZE_FROM_M, "9")
    monkeypatch.setenv(names.ENV_W8A16_UP_TO_M, "100")  # W8A16 is this kernel: no small route to take
    layout = breccia.cast(torch.zeros(1, 192), RECIPES[recipe]).layout
    spec = LinearSpec("qkv_proj", RECIPES[recipe], layout, 192, SHARDS, torch.float16, "cpu", None,
                      forced=names.GEMM_TRITON_W8A16, interpreted=True)
    kernels = TritonW8A16Kernel().configure(spec), EmulatedDequantKernel().configure(spec)
    layers = [merged_layer(RECIPES[recipe], torch.Generator().manual_seed(7))[0] for _ in kernels]
    for kernel, layer in zip(kernels, layers):
        kernel.process_weights_after_loading(layer)
    assert kernels[0].w8a16_up_to_m == 0
    x = torch.randn(9, 192).half()
    # No bias: the emulated kernel adds it inside its matmul, the routes after it (as every kernel).
    routed, reference = (kernel.apply(layer, x, None) for kernel, layer in zip(kernels, layers))
    assert torch.equal(routed, reference)
    few = x[:8]  # below the bound: the W8A16 kernel itself
    on_w8a16 = kernels[0].apply(layers[0], few, None)
    assert torch.equal(on_w8a16, w8a16_matmul(few, layers[0].weight, layers[0].weight_scale,
                                              group=kernels[0].route_group))


def test_the_bounds_per_group_come_from_the_tuned_file_and_the_variable_overrides_them(tmp_path, monkeypatch):
    monkeypatch.delenv(names.ENV_DEQUANTIZE_FROM_M, raising=False)
    monkeypatch.delenv(names.ENV_BLOCK_FP8_CONFIGS, raising=False)
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"dequantize_from_m": {"32": 512, "64": 1024, "per-tensor": 0, "nvfp4": 64},
                                "blocks": {}}))
    monkeypatch.setenv(names.ENV_BLOCK_FP8_CONFIGS, str(path))
    assert [tiles.dequantize_from_m(None, g) for g in (32, 64, 128, None, "nvfp4", "int4")] == [512, 1024, 0, 0, 64, 0]
    monkeypatch.setenv(names.ENV_DEQUANTIZE_FROM_M, "2048")
    assert [tiles.dequantize_from_m(None, g) for g in (32, 128, None, "int4")] == [2048, 2048, 2048, 2048]


@pytest.mark.parametrize("value,message", [
    ('[512]', "dequantize_from_m must map layer keys"),
    ('{"1x32": 512}', "dequantize_from_m: '1x32' is no scale group width or 4-bit recipe"),
    ('{"int8": 512}', "dequantize_from_m: 'int8' is no scale group width or 4-bit recipe"),
    ('{"32": -1}', "dequantize_from_m\\['32'\\] must be a number of rows"),
    ('{"32": "512"}', "dequantize_from_m\\['32'\\] must be a number of rows"),
])
def test_a_bad_dequantize_bound_is_refused_naming_the_file(tmp_path, monkeypatch, value, message):
    monkeypatch.delenv(names.ENV_DEQUANTIZE_FROM_M, raising=False)
    path = tmp_path / f"bad{len(value)}.json"
    path.write_text(f'{{"dequantize_from_m": {value}, "blocks": {{}}}}')
    monkeypatch.setenv(names.ENV_BLOCK_FP8_CONFIGS, str(path))
    with pytest.raises(BrecciaConfigError, match=f"{path}: {message}"):
        tiles.dequantize_from_m(None, 32)
    monkeypatch.setenv(names.ENV_DEQUANTIZE_FROM_M, "lots")
    with pytest.raises(BrecciaConfigError, match=f"{names.ENV_DEQUANTIZE_FROM_M}='lots'"):
        tiles.dequantize_from_m(None, 32)


def test_the_shipped_h200_table_routes_fine_groups_only_and_a_retuned_table_keeps_that(tmp_path, monkeypatch):
    # The H200's file sends MXFP8 / 1x32 and 1x64 layers' batches of 512 tokens or more to the
    # dequantized weight (its basis is in the file), not 1x128 or per-tensor ones, whose
    # kernels are faster there; and the 4-bit layers on triton-w4a16 from 128 tokens.
    # tune_block_fp8.py writes a new table with those routes kept.
    monkeypatch.delenv(names.ENV_DEQUANTIZE_FROM_M, raising=False)
    monkeypatch.delenv(names.ENV_BLOCK_FP8_CONFIGS, raising=False)
    assert [tiles.dequantize_from_m("NVIDIA H200", g) for g in (32, 64, 128, None)] == [512, 512, 0, 0]
    assert [tiles.dequantize_from_m("NVIDIA H200", key) for key in tiles.FOUR_BIT_KEYS] == [128, 128]
    assert tiles.dequantize_from_m("Some GPU", 32) == 0  # no file for it: never
    shipped = tiles.tuned_file("NVIDIA H200")
    retuned = tmp_path / shipped.name
    tiles.write_tables(retuned, tiles.load_tables(shipped), device="NVIDIA H200", **tiles.routes_of(shipped))
    monkeypatch.setenv(names.ENV_BLOCK_FP8_CONFIGS, str(retuned))
    assert [tiles.dequantize_from_m(None, g) for g in (32, 64, 128, "nvfp4")] == [512, 512, 0, 128]
    assert "1.4 TB/s" in json.loads(retuned.read_text())["dequantize_from_m_basis"]
    assert tiles.routes_of(tmp_path / "absent.json") == {}


@pytest.mark.parametrize("recipe", ["nvfp4", "int4-g32", "int4-g32-asym"])
def test_the_w4a16_kernel_routes_prefill_batches_to_the_emulated_kernels_weight(recipe, monkeypatch, caplog):
    # A merged qkv of packed 4-bit codes on triton-w4a16: batches from the bound take the weight
    # dequantized in one pass, bit for bit the emulated kernel's output on its own copy of the
    # layer; smaller ones the W4A16 kernel. (Small 4-bit values can make both outputs equal, so
    # which path ran is recorded too.) No decode route: the kernel is weight-only already.
    from breccia_sglang.integration.gemm import batch_routes, triton_w4a16
    from breccia_sglang.integration.gemm.emulated import EmulatedDequantKernel
    from breccia_sglang.integration.gemm.triton_w4a16 import TritonW4A16Kernel
    from breccia_sglang.kernels.gemm import w4a16_matmul

    from .test_gemm_emulated import RECIPES, SHARDS, merged_layer

    monkeypatch.setenv(names.ENV_DEQUANTIZE_FROM_M, "9")
    monkeypatch.setenv(names.ENV_W8A16_UP_TO_M, "100")
    st = breccia.cast(torch.zeros(1, 192), RECIPES[recipe])
    spec = LinearSpec("qkv_proj", RECIPES[recipe], st.layout, 192, SHARDS, torch.float16, "cpu", None,
                      forced=names.GEMM_TRITON_W4A16, interpreted=True, has_zero_point=st.zero_point is not None)
    kernels = TritonW4A16Kernel().configure(spec), EmulatedDequantKernel().configure(spec)
    layers = [merged_layer(RECIPES[recipe], torch.Generator().manual_seed(8))[0] for _ in kernels]
    routed_rows = []
    batch_routes._announce.cache_clear()  # said once per process; each case says it again
    dequantized = triton_w4a16.dequantized_4bit_linear
    monkeypatch.setattr(triton_w4a16, "dequantized_4bit_linear",
                        lambda rows, *args, **kwargs: routed_rows.append(len(rows)) or dequantized(rows, *args, **kwargs))
    with caplog.at_level(logging.INFO):
        for kernel, layer in zip(kernels, layers):
            kernel.process_weights_after_loading(layer)
    key = "nvfp4" if recipe == "nvfp4" else "int4"
    assert (kernels[0].w8a16_up_to_m, kernels[0].dequantize_from_m) == (0, 9)
    assert (f"triton-w4a16 runs batches of 9 tokens or more on its weight dequantized in one pass and a dense "
            f"GEMM ({key} weights)") in caplog.text
    x = torch.randn(9, 192, generator=torch.Generator().manual_seed(9)).half()
    routed, reference = (kernel.apply(layer, x, None) for kernel, layer in zip(kernels, layers))
    assert torch.equal(routed, reference)
    few, w = x[:8], layers[0]
    zero_point = getattr(w, "weight_zero_point", None)
    on_w4a16 = w4a16_matmul(few, w.weight, w.weight_scale, zero_point, group=kernels[0].group,
                            codes=kernels[0].codes)
    assert torch.equal(kernels[0].apply(w, few, None), on_w4a16)
    assert routed_rows == [9]
