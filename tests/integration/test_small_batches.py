"""Decode-sized batches of the W8A8 block FP8 kernels on our W8A16 kernel: up to the M a GPU
model's tuned file (or BRECCIA_SGLANG_W8A16_UP_TO_M) gives, and only up to it; reading the
weight and scales as the W8A8 kernel holds them (the Hopper kernel's MN-major scales included).
Under TRITON_INTERPRET=1, both paths real."""

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

N, K = 72, 256


def loaded(kernel, block: int, gen: torch.Generator, monkeypatch, up_to_m: str | None) -> torch.nn.Module:
    """A layer as ``kernel`` holds it after loading, with the variable set to ``up_to_m``."""
    if up_to_m is None:
        monkeypatch.delenv(names.ENV_W8A16_UP_TO_M, raising=False)
    else:
        monkeypatch.setenv(names.ENV_W8A16_UP_TO_M, up_to_m)
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
    # blockscale-sm90 converts its scales to MN-major strides once after loading; W8A16 reads them
    # through their strides. (Its own W8A8 path needs a Hopper: batches here stay under the bound.)
    gen = torch.Generator().manual_seed(1)
    monkeypatch.setattr(hopper, "flashinfer_gemm", lambda: None)
    monkeypatch.setattr(hopper, "torch_has_blockwise", lambda: True)
    monkeypatch.setattr(hopper, "torch_blockwise_linear", lambda *args: pytest.fail("W8A8 for a small batch"))
    kernel = hopper.BlockscaleSm90Kernel()
    layer = loaded(kernel, 128, gen, monkeypatch, "16")
    assert layer.weight_scale.stride() == (1, N)
    x = torch.randn(16, K, generator=gen).half()
    expected = w8a16_matmul(x, layer.weight, layer.weight_scale.contiguous(), group=128)
    assert torch.equal(kernel.apply(layer, x.view(2, 8, K), None), expected.view(2, 8, N))


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
    # Above the bound the layer is SGLang's again.
    kernel.native.apply = lambda layer, x, bias: "sglang"
    assert kernel.apply(layer, torch.zeros(17, K).half(), None) == "sglang"
