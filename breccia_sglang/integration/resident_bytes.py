"""What the loaded model's breccia linear layers hold in memory, told once after loading.

A 4-bit checkpoint exists to serve a model in a quarter of BF16's memory, so the log says what
the quantized layers really hold, read from their parameters (codes, scales, zero points;
biases are the model's own and not counted), beside what BF16 weights of the same shapes would
take, in one line (``benchmarks/bench_memory.py`` reads its bracketed bytes)::

    breccia-sglang: LAYERS quantized layers hold TOTAL (weights W, scales S, zero points Z)
    against BF16_TOTAL in BF16: RATIOx [bytes TOTAL_BYTES / BF16_BYTES]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

BF16_BYTES = 2


@dataclass
class ResidentBytes:
    layers: int = 0
    weights: int = 0
    scales: int = 0
    zero_points: int = 0
    bf16: int = 0  # the same layers' weights in BF16

    @property
    def total(self) -> int:
        return self.weights + self.scales + self.zero_points

    def line(self) -> str:
        return (f"{self.layers} quantized layers (linear and MoE) hold {_size(self.total)} (weights {_size(self.weights)}, "
                f"scales {_size(self.scales)}, zero points {_size(self.zero_points)}) against {_size(self.bf16)} "
                f"in BF16: {self.total / max(self.bf16, 1):.3f}x [bytes {self.total} / {self.bf16}]")


def resident_bytes(model) -> ResidentBytes:
    """Sum the parameters of every breccia linear and MoE layer of ``model`` (this rank's shards)."""
    from .linear_method import BrecciaLinearMethod
    from .moe_method import BrecciaMoEMethod

    found = ResidentBytes()
    for module in model.modules():
        if not isinstance(getattr(module, "quant_method", None), (BrecciaLinearMethod, BrecciaMoEMethod)):
            continue
        found.layers += 1
        found.bf16 += module.breccia_elements * BF16_BYTES
        for name, param in module.named_parameters(recurse=False):
            size = param.numel() * param.element_size()
            if "zero" in name:  # weight_zero_point; AWQ-Marlin's qzeros
                found.zero_points += size
            elif "scale" in name:  # weight_scale, weight_global_scale; AWQ-Marlin's scales
                found.scales += size
            elif name.endswith("weight"):  # weight; AWQ-Marlin's qweight; w13_weight, w2_weight
                found.weights += size
    return found


def report_resident_bytes(result, model, target_device):
    """AFTER ``DefaultModelLoader.postprocess_weights`` (every layer's weights final)."""
    from .quant_config import BrecciaConfig

    if isinstance(getattr(model, "quant_config", None), BrecciaConfig):
        logger.info("breccia-sglang: %s", resident_bytes(model).line())
    return result


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} B"
