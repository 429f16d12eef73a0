"""What a breccia MoE kernel hands back to SGLang's FusedMoE layer."""

from __future__ import annotations

import torch


def routed_output(out: torch.Tensor, x: torch.Tensor, config):
    """The layer's (M, H) output ``out`` for hidden states ``x``, as SGLang's combine step takes
    it. On CUDA the router's scaling factor is the MoE kernel's to apply (DeepSeek multiplies
    by it itself only off CUDA), so it is applied here only there."""
    from sglang.srt.layers.moe.token_dispatcher import StandardCombineInput

    if x.is_cuda and config.routed_scaling_factor is not None:
        out = out * config.routed_scaling_factor
    return StandardCombineInput(hidden_states=out)
