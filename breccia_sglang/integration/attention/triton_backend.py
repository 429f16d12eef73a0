"""``BrecciaTritonAttnBackend``: SGLang's Triton attention backend with breccia's kernels.

SGLang's ``TritonAttnBackend`` already builds what paged attention needs, in eager mode
and for CUDA-graph capture and replay: per-request slot indices (``kv_indptr`` /
``kv_indices`` from ``req_to_token``), ``qo_indptr`` for extend, per-request split counts and
fp32 split scratch (``attn_logits`` / ``attn_lse``) for decode. This subclass keeps all of that
and replaces only the three things that touch K/V bytes: the write (``write_kv_fp8``), decode
and extend attention. Each reads the pool through ``PagedKV`` views that the pool builds from
that metadata as it is (a batch view is SGLang's ``kv_indptr`` / ``kv_indices``), so no slot
list is copied. Building a view reads no tensor value on a GPU, so the decode path does no host
synchronisation and captures into CUDA graphs like the parent.

What it does not support is refused by name: speculative decoding, sliding-window layers,
logit soft-capping, attention sinks, non-causal attention, decode context parallelism.
"""

from __future__ import annotations

from sglang.srt.layers.attention.triton_backend import TritonAttnBackend
from sglang.srt.layers.radix_attention import AttentionType
from sglang.srt.runtime_context import get_spec

from ... import names
from ...kernels.attention import paged_decode_attention, paged_extend_attention, write_kv_fp8
from ..kv_pool import BrecciaFP8KVPool

BACKEND_NAME = names.TRITON_BACKEND


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

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        q, out = self._prepare(q, k, v, layer, forward_batch, save_kv_cache, kwargs)
        meta, pool = self.forward_metadata, self.token_to_kv_pool
        # Each request's context: its cached prefix, then its new tokens, read back from their
        # slots (out_cache_loc), so they attend to exactly the FP8 K/V a later prefix hit sees.
        prefix = pool.views(layer.layer_id, meta.kv_indices, meta.kv_indptr)
        new = pool.views(layer.layer_id, forward_batch.out_cache_loc, meta.qo_indptr)
        paged_extend_attention(q, prefix, new, meta.max_extend_len, layer.scaling, out=out)
        return out.view(out.shape[0], -1)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        q, out = self._prepare(q, k, v, layer, forward_batch, save_kv_cache, kwargs)
        meta, pool = self.forward_metadata, self.token_to_kv_pool
        context = pool.views(layer.layer_id, meta.kv_indices, meta.kv_indptr)
        paged_decode_attention(q, context, layer.scaling, num_kv_splits=meta.num_kv_splits, out=out,
                               part_out=meta.attn_logits, part_lse=meta.attn_lse)
        return out.view(out.shape[0], -1)

    def init_forward_metadata(self, forward_batch):
        mode = forward_batch.forward_mode
        if not (mode.is_decode_or_idle() or mode.is_extend()) or mode.is_target_verify() or mode.is_dllm_extend():
            raise NotImplementedError(f"{BACKEND_NAME}: forward mode {mode.name} is not supported")
        super().init_forward_metadata(forward_batch)

    # --- helpers ---------------------------------------------------------------------------

    def _prepare(self, q, k, v, layer, forward_batch, save_kv_cache: bool, extra: dict):
        """Refuse what is unsupported, write the new K/V with the write kernel, and shape q and
        the output: returns (q (tokens, q_heads, head_dim), out (tokens, q_heads, v_head_dim))."""
        self._check_layer(layer, extra)
        if save_kv_cache and k is not None:
            self.token_to_kv_pool.write_kv(layer.layer_id, forward_batch.out_cache_loc, k, v, write_kv_fp8)
        q = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        return q, q.new_empty((q.shape[0], layer.tp_q_head_num, layer.v_head_dim))

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
