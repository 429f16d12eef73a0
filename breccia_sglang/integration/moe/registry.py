"""The kernels a breccia MoE layer can get, best first, chosen as the GEMMs are (``gemm.registry``):
the highest-priority kernel whose ``why_not(spec)`` is None, or the one ``BRECCIA_SGLANG_GEMM``
names when it can serve the layer. The emulated kernel serves every layer, so one always runs."""

from __future__ import annotations

from ..gemm.registry import choose_kernel, kernel_report
from .emulated import EmulatedMoEKernel
from .spec import MoESpec
from .triton_fused import TritonFusedMoEKernel, TritonMoEWna16Kernel
from .triton_w4a16 import TritonMoEW4A16Kernel
from .triton_w8a16 import TritonMoEW8A16Kernel

MOE_KERNELS: list = [TritonFusedMoEKernel, TritonMoEW4A16Kernel, TritonMoEWna16Kernel, TritonMoEW8A16Kernel,
                     EmulatedMoEKernel]


def moe_kernel_report(spec: MoESpec) -> list[tuple[str, str | None]]:
    return kernel_report(spec, MOE_KERNELS)


def choose_moe_kernel(spec: MoESpec):
    return choose_kernel(spec, MOE_KERNELS)
