"""The CPU half of the Marlin kernels: a loaded 4-bit layer's parameters, converted as
``marlin-int4`` and ``marlin-nvfp4`` convert them before SGLang's Marlin preparation runs,
read back by SGLang's own dequantizers, equal breccia's values. (Marlin's repack and GEMM are
JIT CUDA: they run only on a GPU with SGLang installed.)

The layers are merged (three shards, q/k/v-like, each with its own scales) with N and K that
Marlin takes (N % 64, K % 128).
"""

from __future__ import annotations

import breccia
import pytest
import torch

from breccia_sglang.format import make_recipe
from breccia_sglang.integration.gemm import LinearSpec, Target
from breccia_sglang.integration.gemm.marlin_w4a16 import MarlinInt4Kernel, MarlinNvfp4Kernel
from breccia_sglang.weights.packing import pack_low_first
from breccia_sglang.weights.sglang_layouts import AwqInt4, ModeloptNvfp4

from ..weights.test_sglang_layouts import (awq_dequantized, expected_in, int4_recipe, int4_weight, merged,
                                           nvfp4_dequantized, same_bits)

SHARDS = (128, 64, 64)  # rows of each merged shard (N = 256)
HOPPER = Target.gpu(90)


def loaded_layer(kernel, st, dtype):
    """A layer whose parameters ``kernel`` declared, filled with ``st`` as the loader fills them."""
    k = st.data.shape[1]
    spec = LinearSpec("model.layers.0.self_attn.qkv_proj", st.recipe, st.layout, k, SHARDS, dtype, HOPPER.device_type,
                      HOPPER.capability, scale_dtype=st.scale.dtype, has_zero_point=st.zero_point is not None,
                      simulated=True)
    assert kernel.why_not(spec) is None, kernel.why_not(spec)
    layer = torch.nn.Module()
    kernel.create_weights(layer, spec, weight_loader=lambda *args: None)
    layer.weight.data.copy_(pack_low_first(st.data))
    layer.weight_scale.data.copy_(st.scale)
    if st.zero_point is not None:
        layer.weight_zero_point.data.copy_(st.zero_point)
    layer.breccia_prefix = spec.prefix
    return layer


def held_bytes(layer) -> dict:
    return {name: p.numel() * p.element_size() for name, p in layer.named_parameters()}


@pytest.mark.parametrize("kind", ["signed", "unsigned", "asymmetric"])
def test_marlin_int4_hands_sglang_awq_params_that_dequantize_to_breccias(kind):
    recipe, k = int4_recipe(kind, 64), 256
    st = merged([int4_weight(recipe, rows, k, seed=i) for i, rows in enumerate(SHARDS)])
    kernel = MarlinInt4Kernel()
    layer = loaded_layer(kernel, st, torch.float16)
    kernel.to_awq_params(layer)
    # What SGLang's AWQMarlinLinearKernel reads, and nothing of ours left beside it.
    assert set(held_bytes(layer)) == {"qweight", "qzeros", "scales"}
    assert (layer.input_size_per_partition, layer.output_size_per_partition, layer.num_groups) == (k, 256, k // 64)
    layout = AwqInt4(layer.qweight.data, layer.qzeros.data, layer.scales.data)
    assert layout.scales.dtype == torch.float16  # Marlin multiplies in the activation dtype
    assert same_bits(awq_dequantized(layout), expected_in(st, torch.float16))
    assert held_bytes(layer)["qweight"] == 256 * k // 2  # still two codes per byte


def test_marlin_int4_names_the_layer_whose_zero_points_awq_cannot_hold():
    recipe = int4_recipe("asymmetric", 64)
    st = merged([int4_weight(recipe, rows, 128, seed=i) for i, rows in enumerate(SHARDS)])
    kernel = MarlinInt4Kernel()
    layer = loaded_layer(kernel, st, torch.bfloat16)
    layer.weight_zero_point.data[5, 1] = 7.5
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.qkv_proj.*7\.5"):
        kernel.to_awq_params(layer)


def test_marlin_nvfp4_hands_sglang_the_modelopt_params_prepare_nvfp4_layer_for_marlin_reads():
    # Rows of very different magnitudes: breccia floors small rows' scales at 2^-9, a subnormal
    # E4M3 code, which SGLang's reference must read as breccia does.
    k = 160
    magnitudes = torch.logspace(-2.6, 0, 256)[torch.randperm(256, generator=torch.Generator().manual_seed(0))]
    st = breccia.cast(torch.randn(256, k, generator=torch.Generator().manual_seed(1)) * magnitudes[:, None],
                      make_recipe("nvfp4"))
    assert bool((st.scale < 8).any()), "no subnormal E4M3 scale: the test lost its point"
    kernel = MarlinNvfp4Kernel()
    layer = loaded_layer(kernel, st, torch.float16)
    packed = layer.weight.data_ptr()
    kernel.to_modelopt_params(layer)
    # prepare_nvfp4_layer_for_marlin's contract: weight (N, K/2) uint8, E4M3 weight_scale,
    # a global scale, the partition sizes and an fp16 / bf16 params_dtype.
    assert layer.weight.data_ptr() == packed and layer.weight.shape == (256, k // 2)
    assert layer.weight_scale.dtype == torch.float8_e4m3fn and layer.weight_global_scale.tolist() == [1.0]
    assert (layer.output_size_per_partition, layer.input_size_per_partition) == (256, k)
    assert layer.params_dtype == torch.float16
    layout = ModeloptNvfp4(layer.weight.data, layer.weight_scale.data, layer.weight_global_scale.data)
    assert same_bits(nvfp4_dequantized(layout), breccia.dequantize(st))
    assert set(held_bytes(layer)) == {"weight", "weight_scale", "weight_global_scale"}
