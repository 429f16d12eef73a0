"""SGLang's native FP8 linear for per-tensor FP8 E4M3 weights.

On GPUs with FP8 tensor cores (sm_89+) SGLang runs it W8A8 (cutlass or torch._scaled_mm, one
scale per merged shard requantized to one per tensor). On sm_80-88 (A100, A10, RTX 30xx)
SGLang's own ``Fp8LinearMethod`` switches to FP8 Marlin, a W8A16 kernel, with each shard's scale
expanded to its channels: exactly breccia's values. Marlin's tiles need N % 64 and K % 128.

Decode-sized batches can take our W8A16 kernel instead where a GPU model's tuned file says so
(``batch_routes``; prefill-sized ones likewise on the weight dequantized in one pass), reading
SGLang's W8A8 layout in place: the loaded (N, K) codes, which SGLang
holds as a transposed (K, N) view, and its scales, per channel (cutlass: each shard's, exactly)
or one requantized max (torch's ``_scaled_mm``).
"""

from __future__ import annotations

import torch

from ... import names
from ...format.recipes import PER_TENSOR_FP8
from ..sglang_params import fp8_params
from .base import GemmKernel, layer_output, needs_gpu, token_rows
from .batch_routes import BatchRoutes

MARLIN_MIN_CAPABILITY = 80  # SGLang's FP8 Marlin: Ampere and later


class SglangFp8PerTensorKernel(BatchRoutes, GemmKernel):
    """SGLang's native FP8 linear (``Fp8LinearMethod``: cutlass / torch._scaled_mm).

    Needs FP8 tensor cores (sm_89+). Merged layers are requantized to one max scale by
    SGLang, exactly as for its own FP8 checkpoints.
    """

    name = names.GEMM_SGLANG_FP8
    priority = 100

    @classmethod
    def why_not(cls, spec):
        if not isinstance(spec.recipe, PER_TENSOR_FP8) or spec.fp8_format != "E4M3":
            return "needs per-tensor FP8 E4M3"
        on_gpu = needs_gpu(spec, cls.name, MARLIN_MIN_CAPABILITY)
        if on_gpu or (spec.capability or 0) >= 89:
            return on_gpu
        n, k = spec.out_features, spec.input_size_per_partition
        if n % 64 or k % 128:
            return f"FP8 Marlin (below sm_89) needs N % 64 and K % 128; this layer is {n} x {k}"
        return None

    @classmethod
    def routes_layer(cls, spec) -> bool:
        # W8A8 only: on sm_80-88 SGLang runs FP8 Marlin, a layout of its own.
        return (spec.capability or 0) >= 89

    def create_weights(self, layer, spec, weight_loader):
        from sglang.srt.layers.quantization.fp8 import Fp8Config, Fp8LinearMethod

        self.native = Fp8LinearMethod(
            Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme="dynamic")
        )
        fp8_params(layer, spec, weight_loader)

    def process_weights_after_loading(self, layer):
        self.native.process_weights_after_loading(layer)
        # Not on FP8 Marlin (W8A16 already, a layout of its own), nor on ROCm (its E4M3 is fnuz).
        if not self.native.use_marlin and torch.version.hip is None and layer.weight.t().is_contiguous():
            self.route_batches(layer, None)

    def fp8_operands(self, layer):
        weight = layer.weight.t()  # (N, K), contiguous: SGLang's (K, N) is a view of the loaded codes
        return weight, layer.weight_scale.reshape(-1, 1).expand(weight.shape[0], 1)

    def apply(self, layer, x, bias):
        out = self.routed(layer, token_rows(x))
        if out is None:
            return self.native.apply(layer, x, bias)
        return layer_output(out, x, bias)
