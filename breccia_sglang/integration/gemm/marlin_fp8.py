"""1x128 block FP8 on SGLang's FP8 Marlin (W8A16, sm_80+), for GPUs without FP8 tensor cores.

An A100, A10 or RTX 30xx cannot run the W8A8 kernels (Triton's FP8 dot needs sm_89); without
this kernel their block FP8 layers would take the emulated kernel, which rebuilds the weight
every call. SGLang serves DeepSeek-style block FP8 there through FP8 Marlin, and
``prepare_fp8_layer_for_marlin`` reads a block size ``[block_n, block_k]`` with scales of shape
(N / block_n, K / block_k): breccia's 1 x 128 scales, (N, K / 128), are that with
``weight_block_size = [1, 128]``, as they are. Marlin's group of 128 along K is the block.

The layer loads the parameters the W8A8 kernels load (``fp8_params``); SGLang's preparation
repacks the codes for Marlin and casts the scales to the activation dtype (as it does for its own
checkpoints: an fp16 model's scales below 2^-14 lose precision there), once after loading. Which
layers fit is SGLang's own rule (``check_marlin_supported``, ``check_marlin_supports_shape``:
N % 64, K % 128), asked for the described GPU. Ranked below the W8A8 kernels, which sm_89+ run.

Not yet run on a GPU by this project: Marlin's repack and GEMM are SGLang's CUDA kernels;
``tests/integration/test_gemm_marlin.py`` checks on CPU what SGLang's preparation receives.
"""

from __future__ import annotations

import torch

from ... import names
from ..sglang_params import fp8_params
from .base import GemmKernel, needs_1x128_block_fp8, needs_gpu
from .marlin_rules import MIN_CAPABILITY, marlin_refusal, scalar_types

GROUP = 128  # FP8 Marlin's K group: breccia's 1 x 128 blocks


class MarlinFp8Kernel(GemmKernel):
    """1x128 block FP8 (W8A16) on SGLang's FP8 Marlin."""

    name = names.GEMM_MARLIN_FP8
    priority = 75  # below triton-block-fp8 (80) and blockscale-sm90 (85), above emulated

    @classmethod
    def why_not(cls, spec):
        if why := needs_1x128_block_fp8(spec):  # FP8 Marlin's K group is the block
            return why
        if spec.params_dtype not in (torch.float16, torch.bfloat16):
            return f"needs float16 or bfloat16 activations, not {spec.params_dtype}"
        return needs_gpu(spec, cls.name, MIN_CAPABILITY) or marlin_refusal(spec, scalar_types().float8_e4m3fn, False)

    def create_weights(self, layer, spec, weight_loader):
        self.params_dtype = spec.params_dtype
        fp8_params(layer, spec, weight_loader)

    def process_weights_after_loading(self, layer):
        from sglang.srt.layers.quantization.marlin_utils_fp8 import prepare_fp8_layer_for_marlin

        n, k = layer.weight.shape
        # What SGLang's preparation reads of a layer, as its own FP8 linears set it.
        layer.output_size_per_partition, layer.input_size_per_partition = n, k
        layer.orig_dtype, layer.weight_block_size = self.params_dtype, [1, GROUP]
        prepare_fp8_layer_for_marlin(layer, size_k_first=False)

    def apply(self, layer, x, bias):
        from sglang.srt.layers.quantization.marlin_utils_fp8 import apply_fp8_marlin_linear

        return apply_fp8_marlin_linear(input=x, weight=layer.weight, weight_scale=layer.weight_scale,
                                       workspace=layer.workspace, size_n=layer.output_size_per_partition,
                                       size_k=layer.input_size_per_partition, bias=bias)
