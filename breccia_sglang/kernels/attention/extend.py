"""Paged extend (prefill) attention over the breccia FP8 KV pool.

Each request's new tokens attend to its cached prefix (all visible) and then to the new
tokens themselves (causal). Both are read in place from the pool, the new tokens from the
slots they were just written to, so a token's K/V is the same FP8 + scale whether it came
from the prefix cache or was computed this turn: the attention a prefix hit sees is the one
a recompute would see.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...kvcache import PagedKV
from ..launch import check_tensor, fp32_on_gpu, gpu_tiles, native_fp8_decode, ptx_decode
from .operands import LOG2E, check_kv, check_query, dot_precision, pointers, ragged
from .paged_tile import attend_tile, load_fp8_tile, query_operand


@triton.jit
def _attend_slots(q, q_unit, row_pos, slot_ids_ptr, key_lo, key_hi, causal: tl.constexpr,
                  k_data_ptr, k_scale_ptr, v_data_ptr, v_scale_ptr, kv_head,
                  stride_k_slot, stride_k_head, stride_ks_slot, stride_v_slot, stride_v_head, stride_vs_slot,
                  d, d_ok, dv, dv_ok, m, l, acc, qk_scale_log2,
                  BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, NATIVE_FP8: tl.constexpr,
                  PTX: tl.constexpr):
    """Fold keys key_lo..key_hi-1 (slots ``slot_ids_ptr[key]``) into the softmax state; with
    ``causal``, the query at ``row_pos`` sees keys at positions <= row_pos."""
    for start in range(key_lo, key_hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < key_hi
        slots = tl.load(slot_ids_ptr + n, mask=n_ok, other=0).to(tl.int64)
        k, k_scale = load_fp8_tile(k_data_ptr, k_scale_ptr, slots, kv_head, stride_k_slot, stride_k_head,
                                   stride_ks_slot, d, d_ok, n_ok, q.dtype, NATIVE_FP8, PTX)
        v, v_scale = load_fp8_tile(v_data_ptr, v_scale_ptr, slots, kv_head, stride_v_slot, stride_v_head,
                                   stride_vs_slot, dv, dv_ok, n_ok, q.dtype, NATIVE_FP8, PTX)
        visible = n_ok[None, :]
        if causal:
            visible = visible & (n[None, :] <= row_pos[:, None])
        m, l, acc = attend_tile(q, q_unit, k, k_scale, v, v_scale, visible, m, l, acc, qk_scale_log2,
                                DOT_PRECISION)
    return m, l, acc


@triton.jit
def _extend_kernel(
    q_ptr, out_ptr, k_data_ptr, k_scale_ptr, v_data_ptr, v_scale_ptr,
    qo_indptr_ptr, prefix_indptr_ptr, prefix_indices_ptr, new_slots_ptr,
    qk_scale_log2,
    stride_q_token, stride_q_head, stride_o_token, stride_o_head,
    stride_k_slot, stride_k_head, stride_ks_slot,
    stride_v_slot, stride_v_head, stride_vs_slot,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, NATIVE_FP8: tl.constexpr, PTX: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    row_block = tl.program_id(2)
    kv_head = head // GROUP
    q_start = tl.load(qo_indptr_ptr + req)
    q_len = tl.load(qo_indptr_ptr + req + 1) - q_start
    if row_block * BLOCK_M < q_len:
        prefix_start = tl.load(prefix_indptr_ptr + req)
        prefix_len = tl.load(prefix_indptr_ptr + req + 1) - prefix_start
        rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)  # position among the new tokens
        row_ok = rows < q_len
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        dv = tl.arange(0, BLOCK_DV)
        dv_ok = dv < V_HEAD_DIM
        q, q_unit = query_operand(tl.load(
            q_ptr + (q_start + rows)[:, None].to(tl.int64) * stride_q_token + head * stride_q_head + d[None, :],
            mask=row_ok[:, None] & d_ok[None, :], other=0.0))

        m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
        # The cached prefix: every key visible.
        m, l, acc = _attend_slots(q, q_unit, rows, prefix_indices_ptr + prefix_start, 0, prefix_len, False,
                                  k_data_ptr, k_scale_ptr, v_data_ptr, v_scale_ptr, kv_head,
                                  stride_k_slot, stride_k_head, stride_ks_slot,
                                  stride_v_slot, stride_v_head, stride_vs_slot,
                                  d, d_ok, dv, dv_ok, m, l, acc, qk_scale_log2, BLOCK_N, DOT_PRECISION, NATIVE_FP8,
                                  PTX)
        # The new tokens, causal; keys past this row block's last row are never visible.
        key_hi = tl.minimum(q_len, (row_block + 1) * BLOCK_M)
        m, l, acc = _attend_slots(q, q_unit, rows, new_slots_ptr + q_start, 0, key_hi, True,
                                  k_data_ptr, k_scale_ptr, v_data_ptr, v_scale_ptr, kv_head,
                                  stride_k_slot, stride_k_head, stride_ks_slot,
                                  stride_v_slot, stride_v_head, stride_vs_slot,
                                  d, d_ok, dv, dv_ok, m, l, acc, qk_scale_log2, BLOCK_N, DOT_PRECISION, NATIVE_FP8,
                                  PTX)
        out = acc / l[:, None]
        tl.store(out_ptr + (q_start + rows)[:, None].to(tl.int64) * stride_o_token + head * stride_o_head + dv[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])


def paged_extend_attention(
    q: torch.Tensor,
    prefix: PagedKV,
    new: PagedKV,
    max_new_tokens: int,
    sm_scale: float | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of each request's new tokens over its cached prefix and themselves.

    Request b's context is its prefix view followed by its new tokens' view (what
    ``PagedScaledTensor.cat`` of the two would give); the new tokens' K/V must already be in
    the pool.

    Parameters
    ----------
    q : (total_new_tokens, q_heads, head_dim) float16 / bfloat16 / float32; request b's rows
        are q[new.indptr[b]:new.indptr[b+1]]. q head h reads kv head h // (q_heads // kv_heads).
    prefix : batch views of each request's cached prefix (SGLang's ``kv_indptr`` / ``kv_indices``);
        its indptr may describe more sequences than the batch.
    new : batch views of each request's new tokens, over the same pool layer: indptr is
        SGLang's ``qo_indptr`` (batch + 1 entries), slots its ``out_cache_loc`` (one per row of q).
    max_new_tokens : the largest new.indptr[b+1] - new.indptr[b] (sets the grid; no device sync).
    sm_scale : softmax scale, default 1 / sqrt(head_dim).
    out : (total_new_tokens, q_heads, v_head_dim) in q's dtype, written if given.

    Returns ``out``.
    """
    tokens, q_heads, head_dim = q.shape
    check_query(q, new, "new")
    check_kv(prefix, head_dim, "prefix")
    if not (prefix.k.shares_storage_with(new.k) and prefix.v.shares_storage_with(new.v)):
        raise ValueError("prefix and new: views of different pool buffers (one layer's K and V expected)")
    qo_indptr, new_slots = ragged(new, "new", 0)
    batch = qo_indptr.shape[0] - 1
    check_tensor("new.slots", new_slots, shape=(tokens,))
    prefix_indptr, prefix_indices = ragged(prefix, "prefix", batch)
    kv_heads, v_head_dim = new.k.data.shape[1], new.v.data.shape[2]
    if out is None:
        out = q.new_empty((tokens, q_heads, v_head_dim))
    check_tensor("out", out, shape=(tokens, q_heads, v_head_dim), dtypes=(q.dtype,), last_dim_contiguous=True)
    if tokens == 0 or batch == 0:
        return out

    block_m = block_n = 64 if gpu_tiles(q) and not fp32_on_gpu(q) else 32
    qk_scale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)) * LOG2E
    k_data, k_scale, v_data, v_scale, *kv_strides = pointers(new)
    _extend_kernel[(batch, q_heads, triton.cdiv(max_new_tokens, block_m))](
        q, out, k_data, k_scale, v_data, v_scale,
        qo_indptr, prefix_indptr, prefix_indices, new_slots,
        qk_scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        *kv_strides,
        GROUP=q_heads // kv_heads, HEAD_DIM=head_dim, V_HEAD_DIM=v_head_dim,
        BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_DV=triton.next_power_of_2(v_head_dim),
        DOT_PRECISION=dot_precision(q.dtype), NATIVE_FP8=native_fp8_decode(q), PTX=ptx_decode(q),
        num_warps=8 if fp32_on_gpu(q) else 4,
    )
    return out
