"""The torch path of writes into the FP8 KV cache (and the reference for the Triton write kernel)."""

from __future__ import annotations

import torch

from .paged_tensor import PagedScaledTensor
from .quant import quantize_kv


def store_kv(x: torch.Tensor, into: PagedScaledTensor) -> None:
    """Quantize ``x`` (tokens, kv_heads, head_dim) and store it at the view's slots, data and
    scales together. ``kernels.attention.write_kv_fp8`` does the same in one Triton kernel,
    bit for bit."""
    if into.is_ragged:
        raise ValueError("store_kv writes into a one-sequence view, not a ragged batch view")
    codes, row_scale = quantize_kv(x)
    into.data.view(torch.uint8)[into.slots] = codes.view(torch.uint8)
    into.scale[into.slots] = row_scale
