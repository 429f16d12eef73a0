"""FP8 activations for the W8A8 block kernels, quantized as SGLang's FP8 linears quantize them.

On a GPU that is SGLang's own ``per_token_group_quant_fp8`` (a CUDA kernel); elsewhere (CPU
under Triton's interpreter, where CI runs the Triton GEMM) the same formula in torch
(``weights.activations``), because the interpreter's fp32 -> fp8 cast drops the rounding carry.
"""

from __future__ import annotations

import torch

from ...weights import quantize_activations_fp8


def quantize_input(rows: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> (float8_e4m3fn codes (M, K), fp32 scales (M, K / block)): one scale per token and K block."""
    if rows.is_cuda:
        from sglang.kernels.ops.quantization.fp8_kernel import per_token_group_quant_fp8

        return per_token_group_quant_fp8(rows, block)
    return quantize_activations_fp8(rows, block)
