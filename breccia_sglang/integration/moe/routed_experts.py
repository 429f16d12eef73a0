"""What our MoE kernels (``triton_w4a16.py``, ``triton_w8a16.py``) share as SGLang's FusedMoE
calls them: the layer's steps around their expert GEMMs.

One layer call:
1. the routed pairs grouped by expert in blocks (SGLang's align op where it runs, else torch:
   ``align.py``; neither syncs with the host);
2. gate/up for every pair, reading each pair's token row of the hidden states;
3. the activation (SiLU or GELU of gate, times up) in torch, in the activation dtype;
4. down for every pair, times the router's weight of the pair, then each token's top_k rows
   summed in fp32.

A kernel gives its tile config for the call (``choose_config``) and its GEMM over the stacked
experts (``expert_gemm``): ``gemm(w, rows, pairs_per_x_row, routed_weights)`` for w in "w13",
"w2", as ``kernels/gemm/routed_blocks.py``'s kernels compute it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .align import routed_blocks, sglang_aligns
from .combine import routed_output
from .params import stored_experts

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}
ExpertGemm = Callable[[str, torch.Tensor, int, torch.Tensor | None], torch.Tensor]


class RoutedExpertsKernel:
    """The MoE layer of ``experts_layer`` on a subclass's GEMM. Subclasses set ``name``,
    ``priority``, ``why_not`` and ``create_weights`` (which sets ``self.spec``), and give
    ``choose_config(num_pairs, num_experts, x)`` and ``expert_gemm(w13, w2, blocks, config)``."""

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
        config = self.choose_config(topk.topk_ids.numel(), self.spec.model_experts, x)  # rows an expert gets
        blocks = routed_blocks(topk.topk_ids, config.block_m, self.spec.num_experts, self.sglang_aligns)
        gemm = self.expert_gemm(stored_experts(layer, "w13"), stored_experts(layer, "w2"), blocks, config)
        out = experts_layer(x, topk.topk_weights, gemm, activation=self.moe_runner_config.activation)
        return routed_output(out, x, self.moe_runner_config)


def experts_layer(x: torch.Tensor, topk_weights: torch.Tensor, gemm: ExpertGemm, *, activation: str) -> torch.Tensor:
    """The routed experts' output for hidden states x (M, H), in x's dtype: for each token, the
    sum over its top_k experts e of weight * down_e(act(gate_e(x)) * up_e(x)), every GEMM on
    ``gemm`` (the module docstring's steps 2-4)."""
    tokens, top_k = topk_weights.shape
    gate, up = gemm("w13", x, top_k, None).chunk(2, dim=-1)
    hidden = (ACTIVATIONS[activation](gate) * up).contiguous()
    down = gemm("w2", hidden, 1, topk_weights.reshape(-1).to(torch.float32))
    return down.view(tokens, top_k, down.shape[-1]).sum(dim=1, dtype=torch.float32).to(x.dtype)
