"""Triton kernels that read the scale-aware FP8 KV cache in place.

- ``kv_write.py``: quantize new K/V rows and store data + scales into their slots.
- ``decode.py``: paged split-KV decode attention (one query token per request).
- ``extend.py``: paged extend (prefill) attention over a cached prefix plus the new tokens.
- ``backend.py``: the SGLang attention backend (``breccia_triton``) that runs them.
Each kernel module keeps its plain-torch fp32 reference beside the kernel.
"""
