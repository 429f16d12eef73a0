"""4-bit experts (INT4 in all three forms, NVFP4) on our Triton MoE W4A16 kernel
(``kernels/gemm/moe_w4a16.py``), the codes read in place.

The stacked parameters are the ones every MoE kernel loads (``params.py``): (E, N, K / 2) codes,
two per byte with the even element low, (E, N, K / G) scales and, for asymmetric INT4, zero
points. Nothing is converted after loading: the kernel reads each expert as the dense W4A16
kernel reads a linear layer (``gemm/triton_w4a16.py`` says which code kind each recipe is). The
layer's steps around the GEMMs are ``routed_experts.py``'s.

It ranks above SGLang's W4A16 MoE kernel (``triton_fused.TritonMoEWna16Kernel``), which reads
every packed byte twice and measured 0.05-0.1x BF16 on an H200; NVFP4 experts had only the
emulated kernel before it.
"""

from __future__ import annotations

from ... import names
from ...format.recipes import packs_two_per_byte
from ...kernels.gemm import RoutedBlocks, choose_moe_config, moe_w4a16_matmul
from ...kernels.gemm.four_bit import GROUPS
from ...kernels.gemm.tiling import TileConfig
from ..gemm.base import needs_gpu
from ..gemm.triton_w4a16 import code_kind
from .params import StoredExperts, expert_params
from .routed_experts import ExpertGemm, RoutedExpertsKernel
from .spec import MoESpec


class TritonMoEW4A16Kernel(RoutedExpertsKernel):
    """INT4 (signed, unsigned, zero-point) and NVFP4 experts, groups 16-128, on our W4A16 kernel."""

    name = names.GEMM_TRITON_MOE_W4A16
    priority = 85
    choose_config = staticmethod(choose_moe_config)

    @classmethod
    def why_not(cls, spec: MoESpec) -> str | None:
        if not packs_two_per_byte(spec.recipe):
            return "needs 4-bit experts (NVFP4 or INT4)"
        if spec.block not in GROUPS:
            return f"needs groups of {'/'.join(map(str, GROUPS))} along K, not {spec.block}"
        for w, (_, k) in spec.projections().items():
            if k % spec.block:
                return f"{w}: K={k} splits a {spec.block}-wide scale group"
        if spec.has_zero_point and spec.recipe.signed:
            return "zero points with signed codes have no (u - z) form"
        return needs_gpu(spec, cls.name, 80, triton=True)

    def create_weights(self, layer, spec: MoESpec, weight_loader) -> None:
        self.spec = spec
        self.codes = code_kind(spec.recipe, spec.has_zero_point)
        expert_params(layer, spec, weight_loader)

    def expert_gemm(self, w13: StoredExperts, w2: StoredExperts, blocks: RoutedBlocks, config: TileConfig):
        return w4a16_experts(w13, w2, blocks, config, group=self.spec.block, codes=self.codes)


def w4a16_experts(w13: StoredExperts, w2: StoredExperts, blocks: RoutedBlocks, config: TileConfig, *,
                  group: int, codes: str) -> ExpertGemm:
    """``routed_experts.experts_layer``'s GEMM over 4-bit experts on the MoE W4A16 kernel."""
    stacked = {"w13": w13, "w2": w2}

    def gemm(w: str, rows, pairs_per_x_row: int, routed_weights):
        e = stacked[w]
        return moe_w4a16_matmul(rows, e.data, e.scale, e.zero_point, blocks, config, group=group, codes=codes,
                                pairs_per_x_row=pairs_per_x_row, routed_weights=routed_weights)
    return gemm
