"""Triton kernels that read the scale-aware FP8 KV cache in place, through ``PagedKV`` views.

- ``write_kv.py``: quantize new K/V rows and store data + scales into a view's slots.
- ``decode.py``: paged split-KV decode attention (one query token per request).
- ``decode_tiles.py``: its tile configs (keys a step, warps, stages), tuned per GPU model in ``tuned/``.
- ``extend.py``: paged extend (prefill) attention over a cached prefix plus the new tokens.
- ``reference.py``: the fp32 torch references each kernel is tested against.
- ``operands.py``: checking the views a launcher is given and turning them into kernel arguments.
- ``fp8_codec.py``, ``paged_tile.py``: the jit helpers the kernels share (E4M3 bits, the
  online-softmax step over one tile of FP8 K/V).
"""

from .decode import paged_decode_attention
from .extend import paged_extend_attention
from .write_kv import write_kv_fp8

__all__ = ["paged_decode_attention", "paged_extend_attention", "write_kv_fp8"]
