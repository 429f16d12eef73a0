"""The emulated kernel's forward pass, for every recipe and merged shards, with no NumPy call, no
tensor value read on the host (a GPU's CUDA graph could not capture it), and
weights that stay quantized in memory (4-bit codes two per byte): a matmul on breccia's own dequantized weight bit for bit,
or, for per-tensor FP8, the matmul on the codes' exact values and then each shard's scale."""

from __future__ import annotations

import breccia
import pytest
import torch
import torch.nn.functional as F

from breccia_sglang import names
from breccia_sglang.format import make_recipe
from breccia_sglang.integration.gemm import LinearSpec
from breccia_sglang.integration.gemm.emulated import EmulatedDequantKernel
from breccia_sglang.weights.packing import served_codes

RECIPES = {
    "fp8": make_recipe("fp8"), "fp8-block-64": make_recipe("fp8-block", block_k=64), "mxfp8": make_recipe("mxfp8"),
    "nvfp4": make_recipe("nvfp4"), "int4-g32": make_recipe("int4", group_size=32),
    "int4-g32-asym": make_recipe("int4", group_size=32, symmetric=False),
}
SHARDS = (48, 16, 16)  # a merged qkv_proj of uneven shards


def merged_layer(recipe, gen) -> tuple[torch.nn.Module, torch.Tensor]:
    """The parameters SGLang holds for a merged layer (codes, scales, zero points), and breccia's
    dequantized weight of each shard, stacked."""
    shards = [breccia.cast(torch.randn(rows, 192, generator=gen) * (4.0 ** i), recipe) for i, rows in enumerate(SHARDS)]
    per_tensor = shards[0].scale.dim() == 0
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.cat([served_codes(s.data, recipe) for s in shards]), requires_grad=False)
    scale = torch.stack([s.scale for s in shards]) if per_tensor else torch.cat([s.scale for s in shards])
    layer.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
    if shards[0].zero_point is not None:
        layer.weight_zero_point = torch.nn.Parameter(torch.cat([s.zero_point for s in shards]), requires_grad=False)
    layer.logical_widths = list(SHARDS)
    return layer, torch.cat([breccia.dequantize(s) for s in shards])


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_forward_pass_is_a_matmul_on_breccias_weight_with_no_numpy_and_no_host_read(recipe, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(len(recipe))
    layer, expected_weight = merged_layer(RECIPES[recipe], gen)
    spec = LinearSpec("qkv_proj", RECIPES[recipe], breccia.cast(torch.zeros(1, 192), RECIPES[recipe]).layout,
                      192, SHARDS, dtype, "cpu", None)
    assert EmulatedDequantKernel.why_not(spec) is None and EmulatedDequantKernel.name == names.GEMM_EMULATED
    kernel = EmulatedDequantKernel().configure(spec)
    kernel.process_weights_after_loading(layer)
    stored = {name: p.data.clone() for name, p in layer.named_parameters()}
    x, bias = torch.randn(7, 192, generator=gen).to(dtype), torch.randn(80, generator=gen).to(dtype)

    def numpy_was_called(*args, **kwargs):
        raise AssertionError("NumPy was called on the forward path")

    def host_read(*args, **kwargs):  # on a GPU: a sync, which a CUDA graph cannot capture (seen on an H200)
        raise AssertionError("a tensor value was read on the host on the forward path")

    monkeypatch.setattr(torch.Tensor, "numpy", numpy_was_called)
    monkeypatch.setattr(torch, "from_numpy", numpy_was_called)
    for read in ("__bool__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, read, host_read)
    out = kernel.apply(layer, x, bias)
    monkeypatch.undo()
    if recipe == "fp8" and dtype == torch.bfloat16:
        # W8A16 with the scale after the matmul: the codes' values are exact in bf16.
        values = layer.weight.data.to(dtype)
        scales = torch.cat([s.expand(rows) for s, rows in zip(layer.weight_scale.data, SHARDS)])
        expected = (F.linear(x, values).float() * scales).to(dtype) + bias
        assert torch.equal(out, expected)
        # Against the fp32 reference: the output's own rounding (2^-8 for bf16) dominates.
        reference = x.float() @ expected_weight.T + bias.float()
        assert (out.float() - reference).abs().max() <= 2**-6 * reference.abs().max()
    else:  # fp16 keeps the scaled weight: its range cannot hold a matmul of unscaled codes
        assert torch.equal(out, F.linear(x, expected_weight.to(dtype), bias))
    # Still quantized in memory, untouched by the forward pass.
    for name, p in layer.named_parameters():
        assert torch.equal(p.data.view(torch.uint8) if p.dtype == torch.float8_e4m3fn else p.data,
                           stored[name].view(torch.uint8) if p.dtype == torch.float8_e4m3fn else stored[name])
    assert layer.weight.element_size() == 1
    # NVFP4 and INT4 take half a byte per weight: (N, K / 2) bytes.
    assert layer.weight.shape == (80, 96 if recipe.startswith(("nvfp4", "int4")) else 192)


def test_nan_codes_stay_nan(monkeypatch):
    # A broken checkpoint's E4M3 NaN code: the fast bit moves would read it as 480; the kernel
    # notices it once after loading and keeps breccia's NaN.
    gen = torch.Generator().manual_seed(1)
    layer, expected = merged_layer(RECIPES["fp8-block-64"], gen)
    layer.weight.data.view(torch.uint8)[3, 5] = 0x7F
    spec = LinearSpec("qkv_proj", RECIPES["fp8-block-64"], breccia.PerBlockK(64), 192, SHARDS, torch.bfloat16,
                      "cpu", None)
    kernel = EmulatedDequantKernel().configure(spec)
    kernel.process_weights_after_loading(layer)
    weight = kernel.dequantized_weight(layer, torch.bfloat16)
    assert weight[3, 5].isnan() and not weight[3, 4].isnan()
