"""The GEMM kernels a breccia linear layer can get, best first, and the choice for one layer.

``choose_kernel`` takes the highest-priority kernel that can implement a ``LinearSpec``. The
emulated kernel can implement everything we load, on any device, so a layer always has a
kernel; ``breccia-sglang inspect`` prints the choice per layer. ``BRECCIA_SGLANG_GEMM=NAME``
puts kernel NAME first for every layer it can serve (to compare kernels, or to run a Triton
kernel on CPU under the interpreter); the other layers keep their usual choice.
"""

from __future__ import annotations

from ... import names
from ...errors import BrecciaCheckpointError
from .base import GemmKernel, LinearSpec
from .blockscale_sm90 import BlockscaleSm90Kernel
from .emulated import EmulatedDequantKernel
from .marlin_fp8 import MarlinFp8Kernel
from .marlin_w4a16 import MarlinInt4Kernel, MarlinNvfp4Kernel
from .sglang_fp8 import SglangFp8PerTensorKernel
from .sglang_fp8_channel import SglangFp8PerChannelKernel
from .triton_block_fp8 import TritonBlockFp8Kernel
from .triton_w4a16 import TritonW4A16Kernel
from .triton_w8a16 import TritonW8A16Kernel
from .w8a8_reference import W8A8ReferenceKernel

# Every kernel name BRECCIA_SGLANG_GEMM may give, dense or MoE (a name one family lacks leaves
# that family's choice as it is).
ALL_KERNEL_NAMES = {getattr(names, n) for n in dir(names) if n.startswith("GEMM_")}

KERNELS: list[type[GemmKernel]] = [SglangFp8PerTensorKernel, SglangFp8PerChannelKernel, MarlinInt4Kernel,
                                   MarlinNvfp4Kernel, BlockscaleSm90Kernel, TritonBlockFp8Kernel, MarlinFp8Kernel,
                                   TritonW8A16Kernel, TritonW4A16Kernel, EmulatedDequantKernel, W8A8ReferenceKernel]


def ranked(spec: LinearSpec, kernels: list | None = None) -> list[type[GemmKernel]]:
    """Every kernel of ``kernels`` (default: the GEMMs), best first for ``spec``: the one it
    asks for, then by priority."""
    kernels = KERNELS if kernels is None else kernels
    known = {k.name for k in kernels}
    if spec.forced and spec.forced not in known | ALL_KERNEL_NAMES:
        raise BrecciaCheckpointError(f"{names.ENV_GEMM}={spec.forced!r} names no kernel "
                                     f"(known: {', '.join(sorted(known | ALL_KERNEL_NAMES))})")
    return sorted(kernels, key=lambda k: (k.name != spec.forced, -k.priority))


def kernel_report(spec: LinearSpec, kernels: list | None = None) -> list[tuple[str, str | None]]:
    """Every kernel with the reason it cannot run ``spec`` (None: it can), best first."""
    return [(k.name, k.why_not(spec)) for k in ranked(spec, kernels)]


def choose_kernel(spec: LinearSpec, kernels: list | None = None) -> type[GemmKernel]:
    for kernel in ranked(spec, kernels):
        if kernel.why_not(spec) is None:
            return kernel
    reasons = "; ".join(f"{name}: {why}" for name, why in kernel_report(spec, kernels))
    raise BrecciaCheckpointError(f"{spec.prefix}: no kernel can serve this layer ({reasons})")
