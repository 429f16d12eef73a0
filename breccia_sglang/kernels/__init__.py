"""Triton kernels, one file per op, each with an fp32 torch reference. Imports torch, triton
and the layers below (``kvcache``, ``weights``); never SGLang.

- ``attention/``: FP8 KV write, paged decode and paged extend attention over the breccia KV cache.
- ``gemm/``: the W4A16 dequant-GEMM over 4-bit weight codes packed two per byte.
- ``launch.py``: what every launcher shares: argument checks, and the choices a launch makes
  from its device (tile sizes, how FP8 bytes become values).
"""
