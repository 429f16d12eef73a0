"""``BrecciaTritonAttnBackend``: SGLang's Triton attention backend with breccia's kernels.

SGLang's ``TritonAttnBackend`` already builds what paged attention needs, in eager mode
and for CUDA-graph capture and replay: per-request slot indices (``kv_indptr`` /
``kv_indices`` from ``req_to_token``), ``qo_indptr`` for extend, per-request split counts and
fp32 split scratch (``attn_logits`` / ``attn_lse``) for decode. This subclass keeps all of that
and replaces only the three things that touch K/V bytes: the write (``write_kv_fp8``), decode
and extend attention, which read FP8 K/V and their per-(token, head) scales in place. The
decode path does no host synchronisation, so it captures into CUDA graphs like the parent.

What it does not support is refused by name: speculative decoding, sliding-window layers,
logit soft-capping, attention sinks, non-causal attention, decode context parallelism.
"""

from __future__ import annotations

from sglang.srt.layers.attention.triton_backend import TritonAttnBackend
from sglang.srt.layers.radix_attention import AttentionType
from sglang.srt.runtime_context import get_spec

from ..paged.kv_pool import BrecciaFP8KVPool
from .decode import paged_decode_attention
from .extend import paged_extend_attention
from .kv_write import write_kv_fp8

BACKEND_NAME = "breccia_triton"


class BrecciaTritonAttnBackend(TritonAttnBackend):
    """Paged dequant-attention over ``BrecciaFP8KVPool`` with the Triton kernels."""

    def __init__(self, model_runner, *args, **kwargs):
        pool = model_runner.token_to_kv_pool
        if not isinstance(pool, BrecciaFP8KVPool):
            raise ValueError(f"{BACKEND_NAME} reads the breccia FP8 KV cache, but the KV pool is "
                             f"{type(pool).__name__} (serve a breccia checkpoint with --kv-cache-dtype auto)")
        if get_spec().speculative_algorithm is not None:
            raise NotImplementedError(f"{BACKEND_NAME}: speculative decoding is not supported")
        if model_runner.sliding_window_size not in (None, -1, 0):
            raise NotImplementedError(f"{BACKEND_NAME}: sliding-window attention is not supported")
        super().__init__(model_runner, *args, **kwargs)
        if self.dcp_size > 1:
            raise NotImplementedError(f"{BACKEND_NAME}: decode context parallelism is not supported")
        pool.store_kv = write_kv_fp8  # the pool's writes now go through the Triton write kernel

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        meta, q, out = self._prepare(q, k, v, layer, forward_batch, save_kv_cache, kwargs)
        # The new tokens are read back from their slots (out_cache_loc), so they attend to
        # exactly the FP8 K/V a later prefix hit will see.
        paged_extend_attention(
            q, *self._layer_buffers(layer),
            meta.qo_indptr, meta.kv_indptr, meta.kv_indices, forward_batch.out_cache_loc,
            meta.max_extend_len, layer.scaling, out=out,
        )
        return out.view(out.shape[0], -1)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        meta, q, out = self._prepare(q, k, v, layer, forward_batch, save_kv_cache, kwargs)
        paged_decode_attention(
            q, *self._layer_buffers(layer), meta.kv_indptr, meta.kv_indices, layer.scaling,
            num_kv_splits=meta.num_kv_splits, out=out, part_out=meta.attn_logits, part_lse=meta.attn_lse,
        )
        return out.view(out.shape[0], -1)

    def init_forward_metadata(self, forward_batch):
        mode = forward_batch.forward_mode
        if not (mode.is_decode_or_idle() or mode.is_extend()) or mode.is_target_verify() or mode.is_dllm_extend():
            raise NotImplementedError(f"{BACKEND_NAME}: forward mode {mode.name} is not supported")
        super().init_forward_metadata(forward_batch)

    # --- helpers ---------------------------------------------------------------------------

    def _prepare(self, q, k, v, layer, forward_batch, save_kv_cache: bool, extra: dict):
        """Refuse what is unsupported, write the new K/V, and shape q and the output:
        returns (metadata, q (tokens, q_heads, head_dim), out (tokens, q_heads, v_head_dim))."""
        self._check_layer(layer, extra)
        if save_kv_cache and k is not None:
            self.token_to_kv_pool.set_kv_buffer(layer, forward_batch.out_cache_loc, k, v)
        q = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        return self.forward_metadata, q, q.new_empty((q.shape[0], layer.tp_q_head_num, layer.v_head_dim))

    @staticmethod
    def _check_layer(layer, extra: dict) -> None:
        for name in ("sinks", "score_mod", "aux_tensors"):
            if extra.get(name) is not None:
                raise NotImplementedError(f"{BACKEND_NAME}: layer {layer.layer_id} passes {name}, which is not supported")
        if layer.logit_cap and layer.logit_cap > 0:
            raise NotImplementedError(f"{BACKEND_NAME}: layer {layer.layer_id} uses logit soft-capping")
        if layer.sliding_window_size is not None and layer.sliding_window_size > -1:
            raise NotImplementedError(f"{BACKEND_NAME}: layer {layer.layer_id} uses sliding-window attention")
        if layer.is_cross_attention or layer.attn_type != AttentionType.DECODER:
            raise NotImplementedError(f"{BACKEND_NAME}: layer {layer.layer_id} is not causal decoder self-attention")

    def _layer_buffers(self, layer):
        pool = self.token_to_kv_pool
        k_scale, v_scale = pool.get_kv_scale_buffer(layer.layer_id)
        return pool.get_key_buffer(layer.layer_id), k_scale, pool.get_value_buffer(layer.layer_id), v_scale
