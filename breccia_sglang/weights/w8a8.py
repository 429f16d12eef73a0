"""The fp32 W8A8 reference: what an FP8 GEMM that also quantizes its activations computes.

SGLang's FP8 linears quantize the input to FP8 on the fly (``activations.py``), multiply FP8 by
FP8 with fp32 accumulation and apply both scales. This does the same with plain fp32 torch:
the activations through their FP8 codes and scales, the weight through breccia's dequantize.
A W8A8 kernel differs from it only by summation order; from the emulated kernel (W8A16: the
activations unquantized) by the activation rounding, a few percent on random data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .activations import quantize_activations_fp8
from .dequant import dequantize


def w8a8_reference_linear(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, recipe, layout,
                          *, group: int | None, shard_widths: Sequence[int] | None = None) -> torch.Tensor:
    """x (M, K) @ W^T in fp32 with x quantized per token and ``group`` (None: per token) -> (M, N) fp32."""
    codes, x_scale = quantize_activations_fp8(x, group)
    rows, k = codes.shape
    x_hat = (codes.to(torch.float32).view(rows, x_scale.shape[1], -1) * x_scale[..., None]).view(rows, k)
    return x_hat @ dequantize(data, scale, recipe, layout, shard_widths=shard_widths).T
