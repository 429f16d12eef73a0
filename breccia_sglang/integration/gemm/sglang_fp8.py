"""SGLang's native FP8 linear for per-tensor FP8 E4M3 weights."""

from __future__ import annotations

from ...format.recipes import PER_TENSOR_FP8
from ..sglang_params import fp8_params
from .base import GemmKernel


class SglangFp8PerTensorKernel(GemmKernel):
    """SGLang's native FP8 linear (``Fp8LinearMethod``: cutlass / torch._scaled_mm).

    Needs FP8 tensor cores (sm_89+). Merged layers are requantized to one max scale by
    SGLang, exactly as for its own FP8 checkpoints.
    """

    name = "sglang-fp8"
    priority = 100

    @classmethod
    def why_not(cls, spec):
        if not isinstance(spec.recipe, PER_TENSOR_FP8) or spec.fp8_format != "E4M3":
            return "needs per-tensor FP8 E4M3"
        if spec.device_type != "cuda" or (spec.capability or 0) < 89:
            return "needs a CUDA GPU with FP8 tensor cores (sm_89+)"
        return None

    def create_weights(self, layer, spec, weight_loader):
        from sglang.srt.layers.quantization.fp8 import Fp8Config, Fp8LinearMethod

        self.native = Fp8LinearMethod(
            Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme="dynamic")
        )
        fp8_params(layer, spec, weight_loader)

    def process_weights_after_loading(self, layer):
        self.native.process_weights_after_loading(layer)

    def apply(self, layer, x, bias):
        return self.native.apply(layer, x, bias)
