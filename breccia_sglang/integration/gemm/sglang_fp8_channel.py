"""SGLang's per-channel W8A8 FP8 linear for FP8 weights with one scale per row.

One scale per output row is breccia's block FP8 with a K block as wide as the layer's K (on a
tensor-parallel rank, as wide as the rank's K: ``recipes.per_row_on_shard``): what
compressed-tensors' "channel" strategy, FBGEMM FP8 and ``quantize --recipe fp8-block
--block-k K`` give. SGLang serves the same weights through ``W8A8Fp8LinearMethod``: E4M3 codes
with an fp32 (N, 1) ``ChannelQuantScaleParameter`` (merged shards concatenate their rows, TP
shards slice rows; no scale is requantized), activations quantized per token, then cutlass's
or torch's ``_scaled_mm`` with per-row and per-token scales. That is the format's speed on FP8
tensor cores (sm_89+), where our block kernels would need a block width they take (32, 64, 128)
and our W8A16 kernel skips the tensor cores' FP8 rate.

Decode-sized batches can take our W8A16 kernel instead where a GPU model's tuned file says so
(``batch_routes``), reading SGLang's layout in place: its (K, N) weight is a transposed view of
the loaded (N, K) codes, and the (N, 1) scales are one per row.

On CPU it runs when asked for by name under Triton's interpreter (the flag the Triton kernels
take), with activations quantized in torch by SGLang's per-token formula and SGLang's GEMM path
on torch's CPU ``_scaled_mm``, so CI checks it against the W8A8 reference
(``tests/integration/test_gemm_sglang_channel.py``) and through the engine.
"""

from __future__ import annotations

import torch
from breccia.layouts import PerBlockK
from breccia.recipes import Float8BlockScaling

from ... import names
from .activation_quant import quantize_input
from .base import GemmKernel, layer_output, needs_gpu, token_rows
from .batch_routes import BatchRoutes

MIN_CAPABILITY = 89  # FP8 tensor cores: cutlass's and torch's scaled_mm


def needs_one_scale_per_row(spec) -> str | None:
    """Why a layer is not FP8 E4M3 with one scale per row of this rank's K, or None."""
    if not (isinstance(spec.recipe, Float8BlockScaling) and isinstance(spec.layout, PerBlockK)) \
            or spec.fp8_format != "E4M3":
        return "needs FP8 E4M3 with one scale per row (a K block as wide as K)"
    if spec.block != spec.input_size_per_partition:
        return f"needs one scale per row: 1x{spec.block} blocks on K={spec.input_size_per_partition}"
    return None


class SglangFp8PerChannelKernel(BatchRoutes, GemmKernel):
    """SGLang's ``W8A8Fp8LinearMethod``: per-channel FP8 weights, per-token FP8 activations."""

    name = names.GEMM_SGLANG_FP8_CHANNEL
    priority = 90  # above the block kernels (85, 80): one scale per row, no K blocks to rescale

    @classmethod
    def why_not(cls, spec):
        if why := needs_one_scale_per_row(spec):
            return why
        if spec.params_dtype not in (torch.float16, torch.bfloat16):
            return f"needs float16 or bfloat16 activations, not {spec.params_dtype}"
        return needs_gpu(spec, cls.name, MIN_CAPABILITY, triton=True)

    def create_weights(self, layer, spec, weight_loader):
        from sglang.srt.layers.quantization.w8a8_fp8 import W8A8Fp8Config, W8A8Fp8LinearMethod

        self.native = W8A8Fp8LinearMethod(W8A8Fp8Config(is_checkpoint_fp8_serialized=True))
        k, n = spec.input_size_per_partition, spec.out_features
        self.native.create_weights(layer, k, list(spec.output_partition_sizes), k, n, spec.params_dtype,
                                   weight_loader=weight_loader)
        layer.logical_widths = list(spec.output_partition_sizes)

    def process_weights_after_loading(self, layer):
        self.native.process_weights_after_loading(layer)  # the weight becomes a (K, N) view of the codes
        if torch.version.hip is None and layer.weight.t().is_contiguous():  # not ROCm's fnuz E4M3
            self.route_batches(layer, None)

    def fp8_operands(self, layer):
        return layer.weight.t(), layer.weight_scale  # (N, K) codes, (N, 1) fp32 scales

    def apply(self, layer, x, bias):
        rows = token_rows(x)
        out = self.routed(layer, rows)
        if out is not None:
            return layer_output(out, x, bias)
        if x.is_cuda:
            return self.native.apply(layer, x, bias)
        # Off CUDA SGLang quantizes activations with a Triton kernel, whose fp32 -> fp8 cast drops
        # the rounding carry under the interpreter; the same per-token formula in torch
        # (activation_quant) goes in instead, and SGLang's GEMM path takes it as pre-quantized.
        from sglang.srt.layers.quantization.fp8_utils import apply_fp8_linear

        codes, scales = quantize_input(rows, rows.shape[1])
        out = apply_fp8_linear(codes, layer.weight, layer.weight_scale, input_scale=scales, bias=bias,
                               cutlass_fp8_supported=self.native.cutlass_fp8_supported,
                               pre_quant_output_dtype=x.dtype)
        return out.view(*x.shape[:-1], out.shape[-1])
