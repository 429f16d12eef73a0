"""The scale-aware FP8 KV cache's maths and its view type. Knows breccia and torch; never
imports SGLang (the pool that holds these buffers inside SGLang is ``integration/kv_pool.py``).

- ``quant.py``: per-(token, kv head) dynamic FP8 quantization of K/V, via breccia.
- ``paged_tensor.py``: ``PagedScaledTensor``, a typed view of one layer's K or V over pool
  pages given by slot references ("view of view": no KV or scale bytes move), for one
  sequence or a ragged batch; ``PagedKV``, the K and V views of the same tokens.
- ``write.py``: ``store_kv``, the torch path of writes into a view's slots.
- ``capacity.py``: the bytes one token costs in the pool.
"""

from .capacity import cell_bytes
from .paged_tensor import PagedKV, PagedScaledTensor
from .quant import dequantize_kv, kv_recipe, quantize_kv
from .write import store_kv

__all__ = ["PagedKV", "PagedScaledTensor", "cell_bytes", "dequantize_kv", "kv_recipe", "quantize_kv", "store_kv"]
