"""Scale-aware paged FP8 KV cache.

- ``kv_quant.py``: per-(token, kv head) dynamic FP8 quantization of K/V, via breccia.
- ``paged_tensor.py``: ``PagedScaledTensor``, a typed view of one layer's K or V over
  pool pages given by slot/page references ("view of view", no KV or scale bytes move).
"""

from .kv_quant import dequantize_kv, kv_recipe, quantize_kv
from .paged_tensor import PagedScaledTensor

__all__ = ["PagedScaledTensor", "dequantize_kv", "kv_recipe", "quantize_kv"]
