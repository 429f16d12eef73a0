"""``breccia_torch``: plain-torch attention over the breccia FP8 KV pool (the reference path, and
what the CPU engine runs unless the Triton kernels are asked for).

It is SGLang's ``torch_native`` backend with one change. Its SDPA loop reads each request's
K/V as ``k_cache[slots]``, slots being the request's row of ``req_to_token``; here
``k_cache`` is a ``ViewReader`` of the layer, so that read is ``PagedScaledTensor(slots)
.dequantize()``: the request's view of the pool, dequantized with its own per-(token, head)
scales. No dequantized copy of the pool is ever made.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

from ...kvcache import PagedScaledTensor


class ViewReader:
    """``reader[slots]`` -> ``view.dequantize()`` of those slots: (len(slots), heads, head_dim) fp32.

    SGLang's SDPA loop casts what it reads to the query's dtype itself.
    """

    def __init__(self, view_of: Callable[[torch.Tensor], PagedScaledTensor]):
        self.view_of = view_of

    def __getitem__(self, slots: torch.Tensor) -> torch.Tensor:
        return self.view_of(slots).dequantize()


class BrecciaTorchAttnBackend(TorchNativeAttnBackend):
    """SGLang's torch_native attention, reading K/V from ``BrecciaFP8KVPool`` through views."""

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        self._reading_layer = layer.layer_id
        return super().forward_extend(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        self._reading_layer = layer.layer_id
        return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)

    # The parent's forward_* pass the layer's raw FP8 buffers as k_cache / v_cache; the loop
    # reads the same layer (set just above) through views instead.

    def _run_sdpa_forward_extend(self, query, output, k_cache, v_cache, *args, **kwargs):
        return super()._run_sdpa_forward_extend(query, output, *self._readers(), *args, **kwargs)

    def _run_sdpa_forward_decode(self, query, output, k_cache, v_cache, *args, **kwargs):
        return super()._run_sdpa_forward_decode(query, output, *self._readers(), *args, **kwargs)

    def _readers(self) -> tuple[ViewReader, ViewReader]:
        pool, layer_id = self.token_to_kv_pool, self._reading_layer
        return (ViewReader(lambda slots: pool.key_view(layer_id, slots)),
                ViewReader(lambda slots: pool.value_view(layer_id, slots)))

