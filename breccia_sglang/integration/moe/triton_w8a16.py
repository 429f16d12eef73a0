"""FP8 E4M3 experts (per-tensor, block 1 x B, MXFP8) on our Triton MoE W8A16 kernel
(``kernels/gemm/moe_w8a16.py``), the codes read in place and the activations unquantized.

It is the FP8 expert kernel where SGLang's W8A8 ``fused_moe_kernel`` (``triton_fused.py``)
cannot run: GPUs without FP8 tensor cores (sm_80 / sm_86: A100, A10, RTX 30xx), and scale
blocks it does not take (1 x 16, 1 x 256). Those experts ran the emulated kernel before it,
every expert dequantized on every call. On sm_89+ SGLang's kernel ranks above it.

The experts load as every MoE kernel loads them (``params.py``), and their scales become what
the W8A8 kernel reads too, once after loading (``params.serve_fp8_experts``): one fp32 scale
per row for per-tensor FP8, the (E, N, K / B) block scales, MXFP8's exponents as exact fp32
powers of two. The layer's steps around the GEMMs are ``routed_experts.py``'s.
"""

from __future__ import annotations

from breccia.layouts import PerTensor

from ... import names
from ...kernels.gemm import RoutedBlocks, choose_moe_w8a16_config, moe_w8a16_matmul
from ...kernels.gemm.tiling import TileConfig
from ..gemm.base import needs_gpu
from ..gemm.triton_w8a16 import fp8_e4m3_refusal
from .params import StoredExperts, expert_params, serve_fp8_experts
from .routed_experts import ExpertGemm, RoutedExpertsKernel
from .spec import MoESpec


class TritonMoEW8A16Kernel(RoutedExpertsKernel):
    """FP8 E4M3 experts (per-tensor, any 1 x B block, MXFP8) on our W8A16 kernel, sm_80+."""

    name = names.GEMM_TRITON_MOE_W8A16
    priority = 70  # below SGLang's W8A8 MoE kernel (sm_89+), above emulated
    choose_config = staticmethod(choose_moe_w8a16_config)

    @classmethod
    def why_not(cls, spec: MoESpec) -> str | None:
        if refusal := fp8_e4m3_refusal(spec):
            return refusal
        for w, (_, k) in spec.projections().items():
            if spec.block and k % spec.block:
                return f"{w}: K={k} splits a {spec.block}-wide scale block"
        return needs_gpu(spec, cls.name, 80, triton=True)

    def create_weights(self, layer, spec: MoESpec, weight_loader) -> None:
        self.spec = spec
        self.group = None if isinstance(spec.layout, PerTensor) else spec.block
        expert_params(layer, spec, weight_loader)

    def process_weights_after_loading(self, layer) -> None:
        serve_fp8_experts(layer, self.spec)
        super().process_weights_after_loading(layer)

    def expert_gemm(self, w13: StoredExperts, w2: StoredExperts, blocks: RoutedBlocks, config: TileConfig):
        return w8a16_experts(w13, w2, blocks, config, group=self.group)


def w8a16_experts(w13: StoredExperts, w2: StoredExperts, blocks: RoutedBlocks, config: TileConfig, *,
                  group: int | None) -> ExpertGemm:
    """``routed_experts.experts_layer``'s GEMM over FP8 experts (scales as ``serve_fp8_experts``
    leaves them) on the MoE W8A16 kernel."""
    stacked = {"w13": w13, "w2": w2}

    def gemm(w: str, rows, pairs_per_x_row: int, routed_weights):
        e = stacked[w]
        return moe_w8a16_matmul(rows, e.data, e.scale, blocks, config, group=group, pairs_per_x_row=pairs_per_x_row,
                                routed_weights=routed_weights)
    return gemm
