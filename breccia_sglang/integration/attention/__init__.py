"""Attention over the breccia FP8 KV pool inside SGLang.

- ``torch_backend.py``: ``breccia_torch``, SGLang's torch_native loop reading through views.
- ``triton_backend.py``: ``breccia_triton``, SGLang's Triton backend metadata with our kernels.
- ``choice.py``: their entries in SGLang's attention registry, and which one a pool gets.
"""
