"""The emulated kernel: breccia's dequantize, then a plain matmul. Runs anywhere."""

from __future__ import annotations

import breccia
import torch
import torch.nn.functional as F
from breccia.layouts import PerTensor

from ...format.recipes import PER_TENSOR_FP8, block_width, stores_native_fp8
from ..sglang_params import code_params, fp8_params
from .base import GemmKernel


class EmulatedDequantKernel(GemmKernel):
    """Dequantize the weight with breccia's own semantics, then ``F.linear``.

    Runs anywhere (CPU included) and is the numerical reference for every other kernel.
    Weights stay quantized in memory and are dequantized per call, so memory use is that of
    the quantized model and speed is not the point (breccia dequantizes MXFP8 / NVFP4 /
    INT4 through NumPy).
    """

    name = "emulated"
    priority = 0

    @classmethod
    def why_not(cls, spec):
        if isinstance(spec.layout, PerTensor):
            if not isinstance(spec.recipe, PER_TENSOR_FP8):
                return f"recipe {spec.recipe.name!r} with a per-tensor scale is not served"
        elif block_width(spec.layout) is None:
            return f"layout {spec.layout.name!r} is not served (per-tensor, per-K-block and 1xN blocks are)"
        elif spec.input_size_per_partition % block_width(spec.layout):
            return f"K={spec.input_size_per_partition} splits a {block_width(spec.layout)}-wide scale block"
        if stores_native_fp8(spec.recipe) and spec.fp8_format != "E4M3":
            return "FP8 E5M2 weights have no SGLang weight path; re-quantize with E4M3"
        return None

    def create_weights(self, layer, spec, weight_loader):
        if stores_native_fp8(spec.recipe):
            fp8_params(layer, spec, weight_loader)
        else:
            code_params(layer, spec, weight_loader)
        self.recipe, self.layout = spec.recipe, spec.layout

    def dequantized_weight(self, layer) -> torch.Tensor:
        """The full-precision (fp32) weight, ``(out_features, in_features)``."""
        # Plain tensors (.data): breccia picks its torch path from the type's module name,
        # and SGLang's parameter subclasses live in sglang.*, which it would treat as NumPy.
        weight, scale = layer.weight.data, layer.weight_scale.data
        if isinstance(self.layout, PerTensor):
            # A merged layer (qkv, gate_up) keeps one scale per logical shard.
            shards = torch.split(weight, layer.logical_widths, dim=0)
            return torch.cat(
                [
                    breccia.dequantize(breccia.from_buffer(w, s, self.recipe, self.layout))
                    for w, s in zip(shards, scale)
                ]
            )
        zero_point = layer.weight_zero_point.data if hasattr(layer, "weight_zero_point") else None
        return breccia.dequantize(breccia.from_buffer(weight, scale, self.recipe, self.layout, zero_point))

    def apply(self, layer, x, bias):
        return F.linear(x, self.dequantized_weight(layer).to(x.dtype), bias)
