"""The W8A8 reference kernel: FP8 activations as SGLang's FP8 GEMMs quantize them, fp32 maths.

Never chosen by itself: ``BRECCIA_SGLANG_GEMM=w8a8-reference`` asks for it, to see what
activation quantization costs (``benchmarks/bench_accuracy.py``'s W8A8 rows) and to check a
W8A8 kernel's tokens through the real engine (``tests/engine/test_gemm_engine.py``).
"""

from __future__ import annotations

import torch

from ... import names
from ...weights.w8a8 import w8a8_reference_linear
from ..sglang_params import stored_weight
from .emulated import EmulatedDequantKernel


class W8A8ReferenceKernel(EmulatedDequantKernel):
    """Same parameters as the emulated kernel; activations through FP8 per token (and K block)."""

    name = names.GEMM_W8A8_REFERENCE
    priority = -10

    @classmethod
    def why_not(cls, spec):
        if spec.fp8_format != "E4M3" or spec.recipe.name not in ("current", "delayed", "block", "mxfp8"):
            return "needs FP8 E4M3 weights (per-tensor, block or MXFP8)"
        if spec.forced != cls.name:
            return f"a reference: only when asked for with {names.ENV_GEMM}={cls.name}"
        return super().why_not(spec)

    def configure(self, spec) -> "W8A8ReferenceKernel":
        self.group = spec.block  # SGLang quantizes activations per token and weight K block
        return super().configure(spec)

    def apply(self, layer, x, bias):
        w = stored_weight(layer)
        rows = x.reshape(-1, x.shape[-1])
        out = w8a8_reference_linear(rows, w.data, w.scale, self.recipe, self.layout, group=self.group,
                                    shard_widths=w.shard_widths)
        if bias is not None:
            out = out + bias.to(torch.float32)
        return out.to(x.dtype).view(*x.shape[:-1], out.shape[-1])
