"""NVFP4 and INT4 on our Triton W4A16 GEMM (``kernels/gemm/w4a16.py``), codes read in place.

The layer's parameters are the ones every 4-bit kernel loads (``code_params``): ``weight``
(N, K / 2) uint8, two codes per byte with the even element in the low nibble, ``weight_scale``
(N, K / G) and, for asymmetric INT4, ``weight_zero_point`` (N, K / G). The kernel reads them
as they are: no conversion after loading, so the weight stays at N * K / 2 bytes.

Which code kind each recipe is (``weights.codes`` decodes the same ones in torch):

- NVFP4: E2M1 codes, E4M3 scale bytes, group 16;
- INT4 symmetric signed: two's complement codes (``int4``);
- INT4 symmetric unsigned, and asymmetric INT4: codes 0..15 (``uint4``), minus the zero point
  when there is one.

It serves any sm_80+ GPU (below sm_89 the E4M3 scales are decoded with integer bit moves) and
every group size SGLang's Marlin kernels refuse, and any N and K: it is the 4-bit fallback
behind SGLang's Marlin kernels (``marlin_w4a16.py``), and NVFP4's kernel for bf16 models before
sm_100 (FP4 Marlin takes fp16 only).

Prefill-sized batches can take the weight dequantized in one pass and a dense GEMM instead,
where a GPU model's tuned file says so (``batch_routes``; keys "int4" and "nvfp4"): the kernel
decodes every weight once per tile of rows, which costs it most at large M.
"""

from __future__ import annotations

from ... import names
from ...format.recipes import packs_two_per_byte
from ...kernels.gemm import dequantized_4bit_linear, w4a16_matmul
from ..sglang_params import code_params, stored_weight
from .base import GemmKernel, layer_output, needs_gpu, token_rows
from .batch_routes import BatchRoutes

GROUPS = (16, 32, 64, 128)  # K elements per scale the kernel takes (kernels.gemm.four_bit.GROUPS)


def code_kind(recipe, has_zero_point: bool) -> str:
    """The W4A16 kernel's name for a 4-bit recipe's codes."""
    if recipe.name == "nvfp4":
        return "e2m1"
    return "int4" if recipe.signed and not has_zero_point else "uint4"


class TritonW4A16Kernel(BatchRoutes, GemmKernel):
    """W4A16 on our Triton kernel: NVFP4 and INT4 (signed, unsigned, zero-point), groups 16-128."""

    name = names.GEMM_TRITON_W4A16
    priority = 60
    SMALL_ROUTE = False  # weight-only already: no activation quantization to skip

    @classmethod
    def route_key(cls, spec) -> str:
        return "nvfp4" if spec.recipe.name == "nvfp4" else "int4"

    @classmethod
    def why_not(cls, spec):
        if not packs_two_per_byte(spec.recipe):
            return "needs a 4-bit recipe (NVFP4 or INT4)"
        if spec.block not in GROUPS:
            return f"needs groups of {'/'.join(map(str, GROUPS))} along K, not {spec.block}"
        if spec.input_size_per_partition % spec.block:
            return f"K={spec.input_size_per_partition} splits a {spec.block}-wide scale group"
        if spec.has_zero_point and spec.recipe.signed:
            return "zero points with signed codes have no (u - z) form"
        return needs_gpu(spec, cls.name, 80, triton=True)

    def configure(self, spec) -> "TritonW4A16Kernel":
        """What process_weights_after_loading() and apply() need to know of the layer's spec."""
        self.codes, self.group, self.key = code_kind(spec.recipe, spec.has_zero_point), spec.block, self.route_key(spec)
        return self

    def create_weights(self, layer, spec, weight_loader):
        self.configure(spec)
        code_params(layer, spec, weight_loader)

    def process_weights_after_loading(self, layer):
        self.route_batches(layer, self.key)

    def dequantized(self, layer, rows):
        w = stored_weight(layer)
        return dequantized_4bit_linear(rows, w.data, w.scale, w.zero_point, group=self.group, codes=self.codes)

    def apply(self, layer, x, bias):
        rows = token_rows(x)
        out = self.routed(layer, rows)
        if out is None:
            w = stored_weight(layer)
            out = w4a16_matmul(rows, w.data, w.scale, w.zero_point, group=self.group, codes=self.codes)
        return layer_output(out, x, bias)
