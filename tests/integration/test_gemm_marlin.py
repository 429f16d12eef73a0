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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_marlin_fp8_hands_sglangs_fp8_marlin_preparation_breccias_codes_and_1x128_scales(dtype, monkeypatch):
    # prepare_fp8_layer_for_marlin runs as SGLang wrote it; only its two CUDA calls (the repack
    # and the workspace) are recorded here, since they need a GPU.
    from sglang.srt.layers.quantization import marlin_utils_fp8 as fp8_marlin
    from sglang.srt.layers.quantization.marlin_utils import marlin_permute_scales

    from breccia_sglang.integration.gemm.marlin_fp8 import MarlinFp8Kernel

    k = 384
    shards = [breccia.cast(torch.randn(rows, k, generator=torch.Generator().manual_seed(i)) * 0.05,
                           make_recipe("fp8-block", block_k=128)) for i, rows in enumerate(SHARDS)]
    codes, scales = torch.cat([s.data for s in shards]), torch.cat([s.scale for s in shards])
    repacked = []
    monkeypatch.setattr(fp8_marlin, "gptq_marlin_repack", lambda **kw: repacked.append(kw) or kw["b_q_weight"],
                        raising=False)
    monkeypatch.setattr(fp8_marlin, "marlin_make_workspace", lambda device: torch.zeros(1, dtype=torch.int))
    spec = LinearSpec("model.layers.0.self_attn.qkv_proj", shards[0].recipe, shards[0].layout, k, SHARDS, dtype,
                      "cuda", 80, simulated=True)
    assert MarlinFp8Kernel.why_not(spec) is None
    kernel, layer = MarlinFp8Kernel(), torch.nn.Module()
    layer.tp_group = None  # what SGLang's FP8 parameter factory reads of a LinearBase (tp = 1)
    kernel.create_weights(layer, spec, weight_loader=lambda *args: None)
    layer.weight.data.copy_(codes)
    layer.weight_scale.data.copy_(scales)
    kernel.process_weights_after_loading(layer)

    (call,) = repacked
    assert (call["size_k"], call["size_n"], call["num_bits"]) == (k, 256, 8)
    # The codes as Marlin's repack reads them: four per int32 along K, K-major; ours, unchanged.
    assert torch.equal(call["b_q_weight"].T.contiguous().view(torch.uint8), codes.view(torch.uint8))
    # Scales: breccia's (N, K / 128), one Marlin group per block, in the activation dtype, with
    # SGLang's own permutation and exponent bias.
    expected = fp8_marlin.fp8_fused_exponent_bias_into_scales(
        marlin_permute_scales(scales.T.contiguous().to(dtype), size_k=k, size_n=256, group_size=128))
    assert layer.weight_scale.dtype == dtype and torch.equal(layer.weight_scale.data, expected)


def test_marlin_fp8_takes_1x128_layers_where_marlin_fits_and_says_why_not_elsewhere():
    from breccia_sglang.integration.gemm.marlin_fp8 import MarlinFp8Kernel

    def spec(recipe, n=256, k=512, dtype=torch.bfloat16, capability=80):
        st = breccia.cast(torch.zeros(1, k), recipe)
        return LinearSpec("layer", recipe, st.layout, k, (n,), dtype, "cuda", capability, simulated=True)

    block128 = make_recipe("fp8-block", block_k=128)
    assert MarlinFp8Kernel.why_not(spec(block128)) is None
    assert MarlinFp8Kernel.why_not(spec(make_recipe("fp8-block", block_k=64))) == \
        "needs 1x128 blocks, not 1x64"
    assert MarlinFp8Kernel.why_not(spec(make_recipe("mxfp8"))) == "needs block FP8 E4M3 with 1x128 scales"
    assert MarlinFp8Kernel.why_not(spec(block128, n=96)) == "SGLang's Marlin needs N % 64 and K % 128; this layer is 96 x 512"
    assert "float16 or bfloat16" in MarlinFp8Kernel.why_not(spec(block128, dtype=torch.float32))
    assert "sm_80" in MarlinFp8Kernel.why_not(spec(block128, capability=75))
