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

import torch
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, unwrap_write_loc

from .kv_quant import FP8, store_kv
from .paged_tensor import PagedScaledTensor

SCALE_BYTES = 4  # fp32 scale per (token, kv head), for K and for V


class BrecciaFP8KVPool(MHATokenToKVPool):
    """Paged FP8 KV with per-(token, head) scales. Constructed by SGLang's configurator with
    the same keyword arguments as ``MHATokenToKVPool``; ``dtype`` is replaced by FP8."""

    def __init__(self, size: int, page_size: int, dtype: torch.dtype, *args, **kwargs):
        if kwargs.get("quant_method") is not None:
            raise ValueError("BrecciaFP8KVPool owns its quantization; SGLang passed a KV quant method")
        super().__init__(size, page_size, FP8, *args, **kwargs)
        # How writes quantize: the torch path here; the Triton attention backend swaps in
        # its write kernel (same bytes, one launch).
        self.store_kv = store_kv

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
        if dcp_kv_mask is not None:
            raise NotImplementedError("breccia FP8 KV cache does not support decode context parallelism")
        # Static per-tensor k_scale / v_scale (from a checkpoint) are not needed: every
        # (token, head) gets its own scale here.
        loc, _, _ = unwrap_write_loc(loc_info)
        idx = (layer_id_override if layer_id_override is not None else layer.layer_id) - self.start_layer
        for data_buf, scale_buf, x, head_dim in (
            (self.k_buffer[idx], self.k_scale_buffer[idx], cache_k, self.head_dim),
            (self.v_buffer[idx], self.v_scale_buffer[idx], cache_v, self.v_head_dim),
        ):
            # Callers pass (tokens, heads, head_dim) or (tokens, heads * head_dim).
            self.store_kv(x.reshape(-1, self.head_num, head_dim), loc, data_buf, scale_buf)

    # --- reads ------------------------------------------------------------------------------

    def key_view(self, layer_id: int, slots: torch.Tensor) -> PagedScaledTensor:
        """Layer ``layer_id``'s K for the tokens in ``slots`` (no copy)."""
        idx = layer_id - self.start_layer
        return PagedScaledTensor(self.k_buffer[idx], self.k_scale_buffer[idx], slots, self.page_size)

    def value_view(self, layer_id: int, slots: torch.Tensor) -> PagedScaledTensor:
        idx = layer_id - self.start_layer
        return PagedScaledTensor(self.v_buffer[idx], self.v_scale_buffer[idx], slots, self.page_size)

    def prefix_views(self, tree_cache, node, layer_id: int) -> tuple[PagedScaledTensor, PagedScaledTensor]:
        """K and V of the prefix SGLang's prefix cache holds up to ``node``, as views.

        Works with any SGLang prefix cache: its ``path_device_indices(node)`` is the block
        table (slot ids) of the cached tokens. No KV or scale byte is copied.
        """
        slots = tree_cache.path_device_indices(node)
        return self.key_view(layer_id, slots), self.value_view(layer_id, slots)

    def scale_of(self, buffer: torch.Tensor) -> torch.Tensor:
        """The scale buffer stored beside ``buffer`` (a K or V buffer of this pool, or a view of it)."""
        ptr = buffer.data_ptr()
        for data, scale in zip(self.k_buffer + self.v_buffer, self.k_scale_buffer + self.v_scale_buffer):
            if data.data_ptr() == ptr:
                return scale
        raise KeyError("tensor is not a K/V buffer of this BrecciaFP8KVPool")

    def get_kv_scale_buffer(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = layer_id - self.start_layer
        return self.k_scale_buffer[idx], self.v_scale_buffer[idx]

    # --- paths that would lose the scales ------------------------------------------------------

    def get_cpu_copy(self, *args, **kwargs):
        raise NotImplementedError("breccia FP8 KV cache: CPU offload of KV pages (and their scales) is not supported")

    def load_cpu_copy(self, *args, **kwargs):
        raise NotImplementedError("breccia FP8 KV cache: CPU offload of KV pages (and their scales) is not supported")

    def set_kv_buffer_prefix_valid(self, *args, **kwargs):
        raise NotImplementedError("breccia FP8 KV cache: prefix-valid writes are not supported")


def breccia_cell_bytes(num_kv_heads: int, head_dim: int, v_head_dim: int, num_layers: int) -> int:
    """Bytes one token costs in the pool: FP8 K and V plus one fp32 scale per head for each."""
    return num_kv_heads * num_layers * (head_dim + v_head_dim + 2 * SCALE_BYTES)
