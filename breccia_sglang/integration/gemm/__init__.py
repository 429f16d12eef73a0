"""GEMM kernels for breccia linear layers inside SGLang, chosen from a description of the layer.

- ``base.py``: ``LinearSpec`` (what a kernel decides on) and ``GemmKernel`` (the interface).
- ``emulated.py``: breccia's dequantize, then a plain matmul; runs anywhere.
- ``sglang_fp8.py``: SGLang's native FP8 linear for per-tensor FP8 on sm_89+.
- ``registry.py``: every kernel, best first, and ``choose_kernel``.
"""

from .base import GemmKernel, LinearSpec, current_device_spec
from .registry import KERNELS, choose_kernel, kernel_report

__all__ = ["KERNELS", "GemmKernel", "LinearSpec", "choose_kernel", "current_device_spec", "kernel_report"]
