"""The batch sizes a quantized layer's kernel hands to another: an FP8 layer's decode-sized
batches to our W8A16 kernel, an FP8 or 4-bit layer's prefill-sized ones to the weight
dequantized in one pass and the platform's dense GEMM.

- Small (M up to ``w8a16_up_to_m``): a linear layer is one pass over its weight, and W8A8 adds a
  pass before it that quantizes the activations. Our W8A16 kernel (``kernels/gemm/w8a16.py``, no
  activation quantization, K split over programs) skips it.
- Large (M from ``dequantize_from_m``, per scale group or 4-bit recipe): the GEMM is bound by
  arithmetic. A W8A8 kernel with fine scales rescales its accumulator every 32 or 64 K, and our
  W4A16 kernel decodes each weight once per tile of rows; ``dequantize_fp8`` / ``dequantize_4bit``
  write the weight in the activation dtype at memory speed (the emulated kernel's values, bit
  for bit) and the platform's dense GEMM (cuBLAS) multiplies it at BF16's speed, after that pass.
Both bounds come from a GPU model's tuned file (``block_fp8_tiles``; ``benchmarks/bench_gemm.py``
measures every kernel and prints the bounds it suggests) or from environment variables; without
either, every batch stays on the layer's kernel. Both read the layer's weight and scales as its
kernel holds them (strides included), so there is no second copy of the weight in memory
between calls.
"""

from __future__ import annotations

import functools
import logging

import torch

from ... import names
from ...kernels.gemm import dequantized_linear, w8a16_matmul
from ...kernels.launch import gpu_model
from .block_fp8_tiles import FOUR_BIT_KEYS, dequantize_from_m, file_key, w8a16_up_to_m

logger = logging.getLogger(__name__)
NEVER = 1 << 62  # a dequantize_from_m that no batch reaches


class BatchRoutes:
    """For an FP8 kernel whose loaded weight is (N, K) E4M3 codes with fp32 (N, K / group)
    scales, or what ``fp8_operands`` makes of its layer; a 4-bit kernel takes the prefill route
    only (``SMALL_ROUTE = False``) and says how (``route_key``, ``dequantized``)."""

    SMALL_ROUTE = True  # False for a kernel that is W8A16 itself, or not FP8
    w8a16_up_to_m = 0
    dequantize_from_m = NEVER
    route_group: int | None = None

    @classmethod
    def routes_layer(cls, spec) -> bool:
        """Whether this kernel hands batches of ``spec``'s layer on at all (``route_batches``)."""
        return True

    @classmethod
    def route_key(cls, spec) -> int | str | None:
        """What the tuned file's ``dequantize_from_m`` knows ``spec``'s layer by
        (``block_fp8_tiles.file_key``): an FP8 weight's scale group width (None: one per row)."""
        return spec.block

    @classmethod
    def route_bounds(cls, device: str | None, key: int | str | None) -> tuple[int, int]:
        """(up to which M batches take W8A16, from which M the dequantized weight; 0: never) for
        the layers of ``key`` (``route_key``) on GPU model ``device``."""
        return (w8a16_up_to_m(device) if cls.SMALL_ROUTE else 0), dequantize_from_m(device, key)

    def route_batches(self, layer, key: int | str | None) -> None:
        """Once, after loading: which batch sizes of this layer leave its kernel on this GPU.
        ``key``: the layer's ``route_key``; for an FP8 layer its scale group width (None: one
        scale per row), which the routes then dequantize by."""
        device = gpu_model(layer.weight)
        self.route_group = key
        self.w8a16_up_to_m, from_m = self.route_bounds(device, key)
        self.dequantize_from_m = from_m or NEVER
        if self.w8a16_up_to_m:
            _announce(f"{self.name} runs batches of up to {self.w8a16_up_to_m} tokens on {names.GEMM_TRITON_W8A16}",
                      device)
        if self.dequantize_from_m < NEVER:
            which = f"{key} weights" if key in FOUR_BIT_KEYS else f"scale groups: {file_key(key)}"
            _announce(f"{self.name} runs batches of {self.dequantize_from_m} tokens or more on its weight "
                      f"dequantized in one pass and a dense GEMM ({which})", device)

    def routed(self, layer, rows: torch.Tensor) -> torch.Tensor | None:
        """``rows`` @ W^T on the route that this many rows take, or None: on the kernel's own."""
        m = rows.shape[0]
        if m <= self.w8a16_up_to_m:
            return w8a16_matmul(rows, *self.fp8_operands(layer), group=self.route_group)
        if m >= self.dequantize_from_m:
            return self.dequantized(layer, rows)
        return None

    def dequantized(self, layer, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` @ W^T on the weight dequantized in one pass, then the dense GEMM."""
        return dequantized_linear(rows, *self.fp8_operands(layer), group=self.route_group)

    def fp8_operands(self, layer) -> tuple[torch.Tensor, torch.Tensor]:
        """(the (N, K) codes, their fp32 scales) as views of the layer's parameters."""
        return layer.weight, layer.weight_scale


def describe_routes(kernel: type, spec, device: str) -> str:
    """The batch routes ``kernel`` would take for ``spec``'s layer on GPU model ``device`` (its
    tuned file, or the environment variables), as ``breccia-sglang inspect`` shows them: "" for none."""
    if not (isinstance(kernel, type) and issubclass(kernel, BatchRoutes)) or not kernel.routes_layer(spec):
        return ""
    up_to, from_m = kernel.route_bounds(device, kernel.route_key(spec))
    routes = []
    if up_to:
        routes.append(f"M <= {up_to}: {names.GEMM_TRITON_W8A16}")
    if from_m:
        routes.append(f"M >= {from_m}: dequantized + dense GEMM")
    return f" ({'; '.join(routes)})" if routes else ""


@functools.lru_cache(maxsize=None)
def _announce(what: str, device: str | None) -> None:
    logger.info("breccia-sglang: %s (%s)", what, device or "no GPU")
