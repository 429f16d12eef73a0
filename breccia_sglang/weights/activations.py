"""FP8 activation quantization as SGLang's W8A8 GEMMs do it, in plain torch.

SGLang quantizes a linear layer's input dynamically before its FP8 GEMM: one scale per token
and K group (``per_token_group_quant_fp8``: amax / 448 floored at 1e-10, the values times the
reciprocal, clamped, cast), or one per token for per-tensor weights. This is that formula in
torch: the reference the W8A8 kernels are tested against, and what they quantize with where
Triton's own fp32 -> fp8 cast is wrong (the interpreter drops its rounding carry).
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
AMAX_FLOOR = 1e-10  # SGLang's eps: an all-zero group keeps a finite scale


def quantize_activations_fp8(x: torch.Tensor, group: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (codes (M, K) float8_e4m3fn, scales (M, K / group) fp32); ``group=None``:
    one scale per token, (M, 1)."""
    rows, k = x.shape
    group = group or k
    if k % group:
        raise ValueError(f"K={k} is not a whole number of {group}-wide activation groups")
    blocks = x.to(torch.float32).view(rows, k // group, group)
    scale = blocks.abs().amax(dim=-1).clamp(min=AMAX_FLOOR) / E4M3_MAX
    codes = (blocks * (1.0 / scale)[..., None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return codes.view(rows, k), scale
