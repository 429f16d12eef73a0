"""The GEMM kernels a breccia linear layer can get, best first, and the choice for one layer.

``choose_kernel`` takes the highest-priority kernel that can implement a ``LinearSpec``. The
emulated kernel can implement everything we load, on any device, so a layer always has a
kernel; ``breccia-sglang inspect`` prints the choice per layer.
"""

from __future__ import annotations

from ...errors import BrecciaCheckpointError
from .base import GemmKernel, LinearSpec
from .emulated import EmulatedDequantKernel
from .sglang_fp8 import SglangFp8PerTensorKernel

KERNELS: list[type[GemmKernel]] = [SglangFp8PerTensorKernel, EmulatedDequantKernel]


def kernel_report(spec: LinearSpec) -> list[tuple[str, str | None]]:
    """Every kernel with the reason it cannot run ``spec`` (None: it can), best first."""
    ranked = sorted(KERNELS, key=lambda k: -k.priority)
    return [(k.name, k.why_not(spec)) for k in ranked]


def choose_kernel(spec: LinearSpec) -> type[GemmKernel]:
    for kernel in sorted(KERNELS, key=lambda k: -k.priority):
        if kernel.why_not(spec) is None:
            return kernel
    reasons = "; ".join(f"{name}: {why}" for name, why in kernel_report(spec))
    raise BrecciaCheckpointError(f"{spec.prefix}: no kernel can serve this layer ({reasons})")
