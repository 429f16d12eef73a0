"""Decode-sized batches of the W8A8 FP8 kernels (block FP8, and SGLang's per-tensor FP8 linear),
on our W8A16 kernel instead.

At decode sizes a linear layer is one pass over its weight, and W8A8 adds a pass before it that
quantizes the activations. Where a GPU model's tuned file says our W8A16 kernel
(``kernels/gemm/w8a16.py``, no activation quantization, K split over programs) is faster up to
some M (``block_fp8_tiles.w8a16_up_to_m``: ``benchmarks/bench_gemm.py`` measures both, the
quantization included), batches up to that M go there. It reads the layer's weight and scales
as the W8A8 kernel holds them (strides included), so there is no second copy.
"""

from __future__ import annotations

import functools
import logging

import torch

from ...kernels.gemm import w8a16_matmul
from .block_fp8_tiles import w8a16_up_to_m

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def gpu_name(index: int) -> str:
    """The GPU model's name, as SGLang names its tuned configs (e.g. "NVIDIA H200")."""
    return torch.cuda.get_device_name(index)


def device_name(t: torch.Tensor) -> str | None:
    return gpu_name(t.device.index or 0) if t.is_cuda else None


class SmallBatchesOnW8A16:
    """For a W8A8 kernel whose loaded weight is (N, K) FP8 with fp32 (N, K / group) scales, or
    what ``w8a16_operands`` makes of its layer."""

    w8a16_up_to_m = 0

    def route_small_batches(self, layer, group: int | None) -> None:
        """Once, after loading: up to which M this layer's batches take W8A16 on this GPU."""
        device = device_name(layer.weight)
        self.w8a16_up_to_m, self.w8a16_group = w8a16_up_to_m(device), group
        if self.w8a16_up_to_m:
            _announce(self.name, self.w8a16_up_to_m, device)

    def small_batch(self, layer, rows: torch.Tensor) -> torch.Tensor | None:
        """``rows`` @ W^T on W8A16 if there are few enough rows, else None."""
        if rows.shape[0] > self.w8a16_up_to_m:
            return None
        weight, scales = self.w8a16_operands(layer)
        return w8a16_matmul(rows, weight, scales, group=self.w8a16_group)

    def w8a16_operands(self, layer) -> tuple[torch.Tensor, torch.Tensor]:
        """(the (N, K) codes, their fp32 scales) as views of the layer's parameters."""
        return layer.weight, layer.weight_scale


@functools.lru_cache(maxsize=None)
def _announce(kernel: str, up_to_m: int, device: str | None) -> None:
    logger.info("breccia-sglang: %s runs batches of up to %d tokens on triton-w8a16 (%s)", kernel, up_to_m,
                device or "no GPU")
