"""The emulated kernel: the weight dequantized in torch (breccia's values), then a plain matmul.

Runs anywhere (CPU included) and is the numerical reference for every other kernel. Weights
stay quantized in memory; each call rebuilds the weight in the activation dtype with no NumPy.

- Per-tensor FP8 (the scale is one number per merged shard) in bf16 or fp32: the codes' exact
  values in the activation dtype (``decode_e4m3_into``: integer bit moves into one reused
  buffer), the matmul, then each output column times its shard's scale. W8A16 with the scale
  applied after the matmul, as FP8 GEMMs apply theirs. (Not in fp16: unscaled codes reach 448,
  and a matmul of them overflows fp16's range.)
- Everything else: ``weights.dequantize_as``, breccia's rounded values, then the matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from breccia.layouts import PerTensor

from ... import names
from ...format.recipes import PER_TENSOR_FP8, block_width, packs_two_per_byte, stores_native_fp8
from ...weights import dequantize, dequantize_as
from ...weights.codes import DECODES_INTO, decode_e4m3_into
from ...weights.dequant import has_nan_codes, row_scales, scales_fit_bit_moves
from ..sglang_params import code_params, fp8_params, stored_weight
from .base import GemmKernel


class EmulatedDequantKernel(GemmKernel):
    """Dequantize the weight with breccia's semantics in torch, then ``F.linear`` (W8A16)."""

    name = names.GEMM_EMULATED
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

    def configure(self, spec) -> "EmulatedDequantKernel":
        """What apply() needs to know of the layer's spec."""
        self.recipe, self.layout, self.column_scales = spec.recipe, spec.layout, None
        return self

    def create_weights(self, layer, spec, weight_loader):
        self.configure(spec)
        (fp8_params if stores_native_fp8(spec.recipe) else code_params)(layer, spec, weight_loader)

    def process_weights_after_loading(self, layer):
        # Once, so the forward pass reads nothing on the host (a CUDA graph captures it): whether
        # the codes hold an FP8 NaN code, which the fast decodes would not keep NaN, and whether
        # the scales fit the E4M3 bit moves.
        self.nan_free = packs_two_per_byte(self.recipe) or not has_nan_codes(layer.weight.data)
        self.small_scales = scales_fit_bit_moves(layer.weight_scale.data, self.recipe)
        self.column_scales = None
        if isinstance(self.layout, PerTensor) and self.recipe.fp8_format == "E4M3" and self.nan_free:
            w = stored_weight(layer)
            self.column_scales = row_scales(w.scale, w.shard_widths, w.data.shape[0])

    def dequantized_weight(self, layer, dtype=None):
        """The weight breccia.dequantize gives, ``(out_features, in_features)`` fp32, or rounded
        to ``dtype`` (the same values, without an fp32 copy)."""
        w = stored_weight(layer)
        if dtype is None:
            return dequantize(w.data, w.scale, self.recipe, self.layout, w.zero_point, shard_widths=w.shard_widths)
        return dequantize_as(w.data, w.scale, self.recipe, self.layout, w.zero_point, dtype=dtype,
                             shard_widths=w.shard_widths, nan_free=getattr(self, "nan_free", None),
                             small_scales=getattr(self, "small_scales", None))

    def apply(self, layer, x, bias):
        if self.column_scales is None or x.dtype not in DECODES_INTO:
            return F.linear(x, self.dequantized_weight(layer, x.dtype), bias)
        codes = layer.weight.data
        out = F.linear(x, decode_e4m3_into(codes, x.dtype, workspace(codes.numel(), x.dtype, x.device)))
        out = (out.float() * self.column_scales).to(x.dtype)
        return out if bias is None else out.add_(bias)


_WORKSPACES: dict = {}


def workspace(elements: int, dtype: torch.dtype, device) -> torch.Tensor:
    """One decode buffer per (dtype, device), grown to the largest weight: every layer's decoded
    weight lives there only until its matmul returns, and a fresh multi-MB buffer per call would
    cost page faults on every call on a CPU."""
    key = (dtype, torch.device(device))
    buffer = _WORKSPACES.get(key)
    if buffer is None or buffer.numel() < elements:
        buffer = _WORKSPACES[key] = torch.empty(elements, dtype=dtype, device=device)
    return buffer
