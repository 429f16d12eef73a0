"""4-bit experts (INT4 in all three forms, NVFP4) on our Triton MoE W4A16 kernel
(``kernels/gemm/moe_w4a16.py``), the codes read in place.

The stacked parameters are the ones every MoE kernel loads (``params.py``): (E, N, K / 2) codes,
two per byte with the even element low, (E, N, K / G) scales and, for asymmetric INT4, zero
points. Nothing is converted after loading: the kernel reads each expert as the dense W4A16
kernel reads a linear layer (``gemm/triton_w4a16.py`` says which code kind each recipe is).

One layer call:
1. the routed pairs grouped by expert in blocks (SGLang's align op where it runs, else torch:
   ``align.py``; neither syncs with the host);
2. gate/up for every pair, reading each pair's token row of the hidden states;
3. the activation (SiLU or GELU of gate, times up) in torch, in the activation dtype;
4. down for every pair, times the router's weight of the pair, then each token's top_k rows
   summed in fp32.

It ranks above SGLang's W4A16 MoE kernel (``triton_fused.TritonMoEWna16Kernel``), which reads
every packed byte twice and measured 0.05-0.1x BF16 on an H200; NVFP4 experts had only the
emulated kernel before it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import names
from ...format.recipes import packs_two_per_byte
from ...kernels.gemm import RoutedBlocks, choose_moe_config, moe_w4a16_matmul
from ...kernels.gemm.four_bit import GROUPS
from ...kernels.gemm.tiling import TileConfig
from ..gemm.base import needs_gpu
from ..gemm.triton_w4a16 import code_kind
from .align import routed_blocks, sglang_aligns
from .combine import routed_output
from .params import StoredExperts, expert_params, stored_experts
from .spec import MoESpec

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}


class TritonMoEW4A16Kernel:
    """INT4 (signed, unsigned, zero-point) and NVFP4 experts, groups 16-128, on our W4A16 kernel."""

    name = names.GEMM_TRITON_MOE_W4A16
    priority = 85

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

    def create_moe_runner(self, layer, moe_runner_config) -> None:
        config = moe_runner_config
        if config.activation not in ACTIVATIONS or config.gemm1_alpha is not None or config.apply_router_weight_on_input:
            raise NotImplementedError(
                f"{self.spec.prefix}: {self.name} computes act(gate) * up with act silu or gelu and the router's "
                f"weight on the output; this model asks for activation {config.activation!r}, gemm1_alpha "
                f"{config.gemm1_alpha}, apply_router_weight_on_input {config.apply_router_weight_on_input}")
        self.moe_runner_config = config

    def process_weights_after_loading(self, layer) -> None:
        self.sglang_aligns = sglang_aligns(layer.w13_weight.device)  # tried now: never inside a graph capture

    def apply(self, layer, dispatch_output):
        x, topk = dispatch_output.hidden_states, dispatch_output.topk_output
        config = choose_moe_config(topk.topk_ids.numel(), self.spec.num_experts, x)
        blocks = routed_blocks(topk.topk_ids, config.block_m, self.spec.num_experts, self.sglang_aligns)
        out = experts_layer(x, stored_experts(layer, "w13"), stored_experts(layer, "w2"), topk.topk_weights, blocks,
                            config, group=self.spec.block, codes=self.codes,
                            activation=self.moe_runner_config.activation)
        return routed_output(out, x, self.moe_runner_config)


def experts_layer(x: torch.Tensor, w13: StoredExperts, w2: StoredExperts, topk_weights: torch.Tensor,
                  blocks: RoutedBlocks, config: TileConfig, *, group: int, codes: str, activation: str) -> torch.Tensor:
    """The routed experts' output for hidden states x (M, H), in x's dtype: for each token, the
    sum over its top_k experts e of weight * down_e(act(gate_e(x)) * up_e(x)), every GEMM on the
    MoE W4A16 kernel over ``blocks`` (grouped with ``config``'s block_m)."""
    tokens, top_k = topk_weights.shape

    def gemm(w: StoredExperts, rows: torch.Tensor, pairs_per_row: int, routed=None) -> torch.Tensor:
        return moe_w4a16_matmul(rows, w.data, w.scale, w.zero_point, blocks, config, group=group, codes=codes,
                                pairs_per_x_row=pairs_per_row, routed_weights=routed)

    gate, up = gemm(w13, x, top_k).chunk(2, dim=-1)
    hidden = (ACTIVATIONS[activation](gate) * up).contiguous()
    down = gemm(w2, hidden, 1, topk_weights.reshape(-1).to(torch.float32))
    return down.view(tokens, top_k, down.shape[-1]).sum(dim=1, dtype=torch.float32).to(x.dtype)
