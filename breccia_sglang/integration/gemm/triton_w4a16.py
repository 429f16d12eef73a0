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
behind SGLang's Marlin kernels (``marlin_w4a16.py``).
"""

from __future__ import annotations

from ... import names
from ...format.recipes import packs_two_per_byte
from ...kernels.gemm import w4a16_matmul
from ..sglang_params import code_params, stored_weight
from .base import GemmKernel, layer_output, needs_gpu, token_rows

GROUPS = (16, 32, 64, 128)  # K elements per scale the kernel takes (kernels.gemm.w4a16.GROUPS)


def code_kind(recipe, has_zero_point: bool) -> str:
    """The W4A16 kernel's name for a 4-bit recipe's codes."""
    if recipe.name == "nvfp4":
        return "e2m1"
    return "int4" if recipe.signed and not has_zero_point else "uint4"


class TritonW4A16Kernel(GemmKernel):
    """W4A16 on our Triton kernel: NVFP4 and INT4 (signed, unsigned, zero-point), groups 16-128."""

    name = names.GEMM_TRITON_W4A16
    priority = 60

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
        """What apply() needs to know of the layer's spec."""
        self.codes, self.group = code_kind(spec.recipe, spec.has_zero_point), spec.block
        return self

    def create_weights(self, layer, spec, weight_loader):
        self.configure(spec)
        code_params(layer, spec, weight_loader)

    def apply(self, layer, x, bias):
        w = stored_weight(layer)
        out = w4a16_matmul(token_rows(x), w.data, w.scale, w.zero_point, group=self.group, codes=self.codes)
        return layer_output(out, x, bias)
