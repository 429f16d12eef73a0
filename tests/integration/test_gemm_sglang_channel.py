"""FP8 with one scale per row on SGLang's ``W8A8Fp8LinearMethod`` (``sglang-fp8-channel``): which
layers it takes, and, under TRITON_INTERPRET=1 (SGLang's activation quantization is a Triton
kernel; torch's ``_scaled_mm`` runs on CPU), its outputs against the fp32 W8A8 reference on
awkward shapes: M = 1, 7 and 33; N = 77 and merged shards of 48 + 16 + 13 rows; K = 96 and 160."""

from __future__ import annotations

import breccia
import pytest
import torch

from breccia_sglang import names
from breccia_sglang.format import make_recipe
from breccia_sglang.integration.gemm import LinearSpec, Target, choose_kernel, kernel_report
from breccia_sglang.integration.gemm.sglang_fp8_channel import SglangFp8PerChannelKernel
from breccia_sglang.weights.w8a8 import w8a8_reference_linear

from .test_gemm_triton import MERGED_ROWS, assert_matches_w8a8, merged_weight, weight


def per_row_spec(k: int, target: Target, *, block: int | None = None, shards=(256,), dtype=torch.bfloat16,
                 forced=None, interpreted=False) -> LinearSpec:
    recipe = make_recipe("fp8-block", block_k=block or k)
    st = breccia.cast(torch.zeros(sum(shards), k), recipe)
    return LinearSpec("model.layers.0.self_attn.qkv_proj", st.recipe, st.layout, k, tuple(shards), dtype,
                      target.device_type, target.capability, forced=forced, interpreted=interpreted,
                      simulated=target.simulated)


@pytest.mark.parametrize("capability, kernel", [(90, names.GEMM_SGLANG_FP8_CHANNEL), (89, names.GEMM_SGLANG_FP8_CHANNEL),
                                                (80, names.GEMM_TRITON_W8A16)])
def test_one_scale_per_row_takes_sglangs_per_channel_linear_where_fp8_tensor_cores_are(capability, kernel):
    # K = 4096 is no block width the Triton block kernel takes: before, every GPU got W8A16.
    assert choose_kernel(per_row_spec(4096, Target.gpu(capability))).name == kernel


def test_what_it_does_not_take_and_why():
    reasons = dict(kernel_report(per_row_spec(4096, Target.gpu(90), block=128)))
    assert reasons[names.GEMM_SGLANG_FP8_CHANNEL] == "needs one scale per row: 1x128 blocks on K=4096"
    reasons = dict(kernel_report(per_row_spec(4096, Target.gpu(90), dtype=torch.float32)))
    assert reasons[names.GEMM_SGLANG_FP8_CHANNEL] == "needs float16 or bfloat16 activations, not torch.float32"
    reasons = dict(kernel_report(per_row_spec(4096, Target.gpu(86))))
    assert reasons[names.GEMM_SGLANG_FP8_CHANNEL] == "needs a CUDA GPU of sm_89+, this is sm_86"
    assert choose_kernel(per_row_spec(4096, Target("cpu"))).name == names.GEMM_EMULATED


def run_kernel(x: torch.Tensor, st, shards) -> torch.Tensor:
    """SGLang's own parameters, filled as its loaders fill them, its post-load step, then apply()."""
    spec = per_row_spec(st.data.shape[1], Target("cpu"), shards=shards, dtype=x.dtype,
                        forced=names.GEMM_SGLANG_FP8_CHANNEL, interpreted=True)
    assert SglangFp8PerChannelKernel.why_not(spec) is None
    kernel, layer = SglangFp8PerChannelKernel(), torch.nn.Module()
    kernel.create_weights(layer, spec, weight_loader=lambda *args: None)
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {
        "weight": tuple(st.data.shape), "weight_scale": (st.data.shape[0], 1)}  # one scale per row, as breccia's
    layer.weight.data.copy_(st.data)
    layer.weight_scale.data.copy_(st.scale)
    kernel.process_weights_after_loading(layer)
    return kernel.apply(layer, x, None)


@pytest.mark.parametrize("m, k", [(1, 96), (7, 160), (33, 96)])
def test_it_matches_the_w8a8_reference(m, k):
    gen = torch.Generator().manual_seed(m + k)
    st = weight(make_recipe("fp8-block", block_k=k), 77, k, gen)
    x = torch.randn(m, k, generator=gen).half()
    ref = w8a8_reference_linear(x, st.data, st.scale, st.recipe, st.layout, group=k)
    assert_matches_w8a8(run_kernel(x, st, (77,)), ref)


def test_a_merged_layer_is_its_shards_rows():
    # qkv_proj: each shard keeps its own per-row scales; nothing is requantized to a shared one.
    gen = torch.Generator().manual_seed(3)
    merged, shards = merged_weight(make_recipe("fp8-block", block_k=96), 96, gen)
    x = torch.randn(7, 96, generator=gen).half()
    out = run_kernel(x, merged, MERGED_ROWS)
    for shard, rows in zip(shards, torch.split(out, list(MERGED_ROWS), dim=1)):
        ref = w8a8_reference_linear(x, shard.data, shard.scale, shard.recipe, shard.layout, group=96)
        assert_matches_w8a8(rows.contiguous(), ref)
