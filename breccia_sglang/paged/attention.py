"""Plain-torch attention over the breccia FP8 KV pool (the reference path, and what the CPU
engine runs until the Triton kernels are selected).

It is SGLang's ``torch_native`` backend with one change: its SDPA loop reads
``k_cache[slots]`` for each request, and here ``k_cache`` is a gather object that
dequantizes just those slots with their own per-(token, head) scales. No dequantized copy
of the pool is ever made.
"""

from __future__ import annotations

import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

from .kv_quant import dequantize_kv

BACKEND_NAME = "breccia_torch"


class DequantizingGather:
    """``gather[slots]`` -> (len(slots), heads, head_dim) in ``dtype``, dequantized from FP8.

    data : (num_slots, heads, head_dim) uint8 / float8_e4m3fn; scale : (num_slots, heads) float32.
    """

    def __init__(self, data: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
        self.data, self.scale, self.dtype = data, scale, dtype

    def __getitem__(self, slots: torch.Tensor) -> torch.Tensor:
        return dequantize_kv(self.data[slots].view(torch.float8_e4m3fn), self.scale[slots]).to(self.dtype)


class BrecciaTorchAttnBackend(TorchNativeAttnBackend):
    """SGLang's torch_native attention, reading K/V from ``BrecciaFP8KVPool``."""

    def _run_sdpa_forward_extend(self, query, output, k_cache, v_cache, *args, **kwargs):
        k_cache, v_cache = self._dequantizing(k_cache, v_cache, query.dtype)
        return super()._run_sdpa_forward_extend(query, output, k_cache, v_cache, *args, **kwargs)

    def _run_sdpa_forward_decode(self, query, output, k_cache, v_cache, *args, **kwargs):
        k_cache, v_cache = self._dequantizing(k_cache, v_cache, query.dtype)
        return super()._run_sdpa_forward_decode(query, output, k_cache, v_cache, *args, **kwargs)

    def _dequantizing(self, k_cache, v_cache, dtype):
        # The parent passes pool.get_key_buffer(layer) (an fp8 view of the layer's buffer);
        # the pool knows each buffer's scales by storage.
        pool = self.token_to_kv_pool
        return (
            DequantizingGather(k_cache, pool.scale_of(k_cache), dtype),
            DequantizingGather(v_cache, pool.scale_of(v_cache), dtype),
        )
