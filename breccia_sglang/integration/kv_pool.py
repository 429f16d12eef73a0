"""``BrecciaFP8KVPool``: SGLang's MHA KV pool with FP8 E4M3 data and one dynamic fp32 scale
per (token, kv head), written with the token.

Layout per layer (SGLang's slots: slot = page * page_size + offset, page 0 is padding):
  k_buffer[l], v_buffer[l]             (size + page_size, kv_heads, head_dim) uint8 (e4m3 bytes)
  k_scale_buffer[l], v_scale_buffer[l] (size + page_size, kv_heads)           float32

The scale buffers use SGLang's own attribute names, so SGLang's generic machinery treats
them as part of the pool: ``get_kv_size_bytes`` counts them, ``move_kv_cache`` moves them
with their slots, and HiCache refuses the pool loudly instead of dropping them. Paths that
would copy K/V without scales raise instead (``get_cpu_copy``, ``load_cpu_copy``,
``set_kv_buffer_prefix_valid``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, unwrap_write_loc

from ..kvcache import PagedKV, PagedScaledTensor, store_kv
from ..kvcache.quant import FP8


class BrecciaFP8KVPool(MHATokenToKVPool):
    """Paged FP8 KV with per-(token, head) scales. Constructed by SGLang's configurator with
    the same keyword arguments as ``MHATokenToKVPool``; ``dtype`` is replaced by FP8."""

    def __init__(self, size: int, page_size: int, dtype: torch.dtype, *args, **kwargs):
        if kwargs.get("quant_method") is not None:
            raise ValueError("BrecciaFP8KVPool owns its quantization; SGLang passed a KV quant method")
        super().__init__(size, page_size, FP8, *args, **kwargs)

    def _create_buffers_normal(self):
        super()._create_buffers_normal()
        rows = self.size + self.page_size
        # Scales start at 0 so unwritten (padding) slots dequantize to 0, never NaN.
        self.k_scale_buffer = [
            torch.zeros((rows, self.head_num), dtype=torch.float32, device=self.device) for _ in range(self.layer_num)
        ]
        self.v_scale_buffer = [
            torch.zeros((rows, self.head_num), dtype=torch.float32, device=self.device) for _ in range(self.layer_num)
        ]

    # --- writes -----------------------------------------------------------------------------

    def set_kv_buffer(self, layer, loc_info, cache_k, cache_v, k_scale=None, v_scale=None,
                      layer_id_override=None, dcp_kv_mask=None):
        """SGLang's write: quantize with the torch path (``store_kv``, breccia's cast)."""
        if dcp_kv_mask is not None:
            raise NotImplementedError("breccia FP8 KV cache does not support decode context parallelism")
        # Static per-tensor k_scale / v_scale (from a checkpoint) are not needed: every
        # (token, head) gets its own scale here.
        loc, _, _ = unwrap_write_loc(loc_info)
        layer_id = layer_id_override if layer_id_override is not None else layer.layer_id
        self.write_kv(layer_id, loc, cache_k, cache_v, store_kv)

    def write_kv(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                 write: Callable[[torch.Tensor, PagedScaledTensor], None]) -> None:
        """Quantize K and V of the tokens at slots ``loc`` into layer ``layer_id`` with ``write``
        (``store_kv``, or the Triton backend's ``write_kv_fp8``: the same bytes)."""
        into = self.views(layer_id, loc)
        # Callers pass (tokens, heads, head_dim) or (tokens, heads * head_dim).
        write(cache_k.reshape(-1, self.head_num, self.head_dim), into.k)
        write(cache_v.reshape(-1, self.head_num, self.v_head_dim), into.v)

    # --- reads ------------------------------------------------------------------------------

    def views(self, layer_id: int, slots: torch.Tensor, indptr: torch.Tensor | None = None) -> PagedKV:
        """Layer ``layer_id``'s K and V for the tokens at ``slots`` (no copy); with ``indptr``,
        a batch view (SGLang's ``kv_indptr`` / ``kv_indices`` as they are)."""
        idx = layer_id - self.start_layer
        return PagedKV.of(self.k_buffer[idx], self.k_scale_buffer[idx], self.v_buffer[idx], self.v_scale_buffer[idx],
                          slots, self.page_size, indptr=indptr)

    def key_view(self, layer_id: int, slots: torch.Tensor) -> PagedScaledTensor:
        """Layer ``layer_id``'s K for the tokens in ``slots`` (no copy)."""
        idx = layer_id - self.start_layer
        return PagedScaledTensor(self.k_buffer[idx], self.k_scale_buffer[idx], slots, self.page_size)

    def value_view(self, layer_id: int, slots: torch.Tensor) -> PagedScaledTensor:
        idx = layer_id - self.start_layer
        return PagedScaledTensor(self.v_buffer[idx], self.v_scale_buffer[idx], slots, self.page_size)

    def prefix_views(self, tree_cache, node, layer_id: int) -> PagedKV:
        """K and V of the prefix SGLang's prefix cache holds up to ``node``, as views.

        Works with any SGLang prefix cache: its ``path_device_indices(node)`` is the block
        table (slot ids) of the cached tokens. No KV or scale byte is copied.
        """
        return self.views(layer_id, tree_cache.path_device_indices(node))

    # --- paths that would lose the scales ------------------------------------------------------

    def get_cpu_copy(self, *args, **kwargs):
        raise NotImplementedError("breccia FP8 KV cache: CPU offload of KV pages (and their scales) is not supported")

    def load_cpu_copy(self, *args, **kwargs):
        raise NotImplementedError("breccia FP8 KV cache: CPU offload of KV pages (and their scales) is not supported")

    def set_kv_buffer_prefix_valid(self, *args, **kwargs):
        raise NotImplementedError("breccia FP8 KV cache: prefix-valid writes are not supported")
