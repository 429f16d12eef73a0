"""Triton kernels, one file per op, each with an fp32 torch reference. Imports torch, triton
and the layers below (``kvcache``, ``weights``); never SGLang.

- ``attention/``: FP8 KV write, paged decode and paged extend attention over the breccia KV cache.
- ``gemm/``: the weight-only GEMMs: W4A16 over 4-bit codes packed two per byte, W8A16 over FP8.
- ``fp16_operands.py``: fp16 / bf16 tiles as exact fp16 dot operands beside FP8 codes.
- ``launch.py``: what every launcher shares: argument checks, and the choices a launch makes
  from its device (tile sizes, how FP8 bytes become values).
"""
