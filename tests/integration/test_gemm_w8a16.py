"""Every FP8 E4M3 recipe on our Triton W8A16 kernel through its layer class, under
TRITON_INTERPRET=1: per-tensor FP8 with one scale per merged shard, 1x32 / 1x64 block FP8 and
MXFP8 (E8M0 scales converted once), against the fp32 matmul on breccia's dequantized weight."""

from __future__ import annotations

import breccia
import pytest
import torch

from breccia_sglang import names
from breccia_sglang.integration.gemm import LinearSpec, Target, choose_kernel, kernel_report
from breccia_sglang.integration.gemm.triton_w8a16 import TritonW8A16Kernel

from .test_gemm_choice import spec_for
from .test_gemm_emulated import RECIPES, SHARDS, merged_layer

FP8_RECIPES = ["fp8", "fp8-block-64", "mxfp8"]


@pytest.mark.parametrize("recipe", FP8_RECIPES)
@pytest.mark.parametrize("m", [1, 33])
def test_a_merged_layer_matches_breccias_weight(recipe, m):
    gen = torch.Generator().manual_seed(len(recipe) + m)
    layer, expected_weight = merged_layer(RECIPES[recipe], gen)
    codes_before = layer.weight.data.clone()
    spec = LinearSpec("qkv_proj", RECIPES[recipe], breccia.cast(torch.zeros(1, 192), RECIPES[recipe]).layout,
                      192, SHARDS, torch.float16, "cpu", None, forced=names.GEMM_TRITON_W8A16, interpreted=True)
    assert TritonW8A16Kernel.why_not(spec) is None
    kernel = TritonW8A16Kernel().configure(spec)
    kernel.process_weights_after_loading(layer)
    x, bias = torch.randn(m, 192, generator=gen).half(), torch.randn(80, generator=gen).half()
    out = kernel.apply(layer, x, bias)
    reference = x.float() @ expected_weight.T + bias.float()
    # The kernel rounds each scaled weight to fp16 (2^-11 relative), sums in fp32 and rounds the
    # output (2^-11) before the fp16 bias add (another 2^-11): 2^-9 of the magnitude covers all.
    magnitude = x.float().abs() @ expected_weight.abs().T + bias.float().abs()
    assert out.dtype == torch.float16 and out.shape == (m, sum(SHARDS))
    assert ((out.float() - reference).abs() <= 2.0**-9 * magnitude + 1e-3).all()
    # The codes stay as loaded (N * K bytes); only the scales became fp32 once.
    assert torch.equal(layer.weight.data.view(torch.uint8), codes_before.view(torch.uint8))
    assert layer.weight_scale.dtype == torch.float32


def test_it_serves_what_sglangs_fp8_kernels_refuse():
    ampere, hopper = Target.gpu(80), Target.gpu(90)
    # Per-tensor FP8 below sm_89 is SGLang's FP8 Marlin, which needs K % 128: SmolLM2's K = 576 comes here.
    assert choose_kernel(spec_for("fp8", Target.gpu(86))).name == names.GEMM_SGLANG_FP8
    assert choose_kernel(spec_for("fp8", Target.gpu(86), k=576)).name == names.GEMM_TRITON_W8A16
    assert choose_kernel(spec_for("mxfp8", ampere)).name == names.GEMM_TRITON_W8A16
    assert choose_kernel(spec_for("fp8-block-256", hopper)).name == names.GEMM_TRITON_W8A16
    # Below SGLang's kernels where they run: asked for by name, it takes those layers too.
    assert choose_kernel(spec_for("fp8-block-64", hopper)).name == names.GEMM_TRITON_BLOCK_FP8
    forced = spec_for("fp8-block-64", hopper, forced=names.GEMM_TRITON_W8A16)
    assert choose_kernel(forced).name == names.GEMM_TRITON_W8A16
    # On CPU: only under the interpreter, and only when asked for.
    cpu = Target("cpu")
    assert choose_kernel(spec_for("mxfp8", cpu, interpreted=True)).name == names.GEMM_EMULATED
    assert choose_kernel(spec_for("mxfp8", cpu, forced=names.GEMM_TRITON_W8A16, interpreted=True)).name == \
        names.GEMM_TRITON_W8A16


def test_its_refusals_name_what_it_needs():
    reasons = {case: dict(kernel_report(spec))[names.GEMM_TRITON_W8A16] for case, spec in [
        ("int4", spec_for("int4", Target.gpu(90))), ("sm_75", spec_for("fp8-block-64", Target.gpu(75))),
        ("K 544", LinearSpec(**{**spec_for("fp8-block-64", Target.gpu(90)).__dict__, "input_size_per_partition": 544}))]}
    assert reasons["int4"] == "needs FP8 E4M3 weights (per-tensor, 1xB block or MXFP8)"
    assert reasons["sm_75"] == "needs a CUDA GPU of sm_80+, this is sm_75"
    assert reasons["K 544"] == "K=544 splits a 64-wide scale block"
