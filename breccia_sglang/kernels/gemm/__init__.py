"""Triton GEMMs over breccia's low-precision weights, read in place.

- ``w4a16.py``: the W4A16 dequant-GEMM over 4-bit codes packed two per byte (INT4, UINT4 with
  zero points, NVFP4's E2M1 with E4M3 scales), with its tile configs per range of M.
- ``reference.py``: the fp32 torch reference it is tested against.
"""

from .w4a16 import w4a16_matmul

__all__ = ["w4a16_matmul"]
