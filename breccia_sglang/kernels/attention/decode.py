"""Paged decode attention over the breccia FP8 KV pool: one query token per request.

Split-KV (flash-decoding): stage 1 gives each (request, kv head, split) program a slice of
the context; it reads K/V in place through the slot indices, applies the per-(token, head)
scales in registers, and writes a partial output with its log-sum-exp. Stage 2 merges the
splits. All query heads of a GQA group share one program, so each K/V byte is read once
per split. The slot indices are SGLang's (``kv_indptr`` / ``kv_indices`` built from
``req_to_token``), which also covers paged layouts: a page's slots are consecutive.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...kvcache import PagedKV
from ..launch import check_tensor, gpu_tiles, native_fp8_decode, ptx_decode
from .decode_tiles import DecodeTiles, decode_tiles
from .operands import LOG2E, check_query, dot_precision, pointers, ragged
from .paged_tile import attend_tile, load_fp8_tile, query_operand

MIN_TOKENS_PER_SPLIT = 256  # below this a split's fixed cost outweighs the parallelism it adds


@triton.jit
def _decode_split_kernel(
    q_ptr, k_data_ptr, k_scale_ptr, v_data_ptr, v_scale_ptr,
    kv_indptr_ptr, kv_indices_ptr, num_splits_ptr,
    part_out_ptr, part_lse_ptr,
    qk_scale_log2,
    stride_q_req, stride_q_head,
    stride_k_slot, stride_k_head, stride_ks_slot,
    stride_v_slot, stride_v_head, stride_vs_slot,
    stride_po_req, stride_po_head, stride_po_split,
    stride_pl_req, stride_pl_head,
    GROUP: tl.constexpr, HEAD_BLOCKS: tl.constexpr,
    HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, NATIVE_FP8: tl.constexpr, PTX: tl.constexpr,
):
    req = tl.program_id(0)
    kv_head = tl.program_id(1) // HEAD_BLOCKS
    head_block = tl.program_id(1) % HEAD_BLOCKS
    split = tl.program_id(2)

    kv_start = tl.load(kv_indptr_ptr + req)
    kv_len = tl.load(kv_indptr_ptr + req + 1) - kv_start
    num_splits = tl.load(num_splits_ptr + req)
    split_len = tl.cdiv(kv_len, num_splits)
    lo = split * split_len
    hi = tl.minimum(lo + split_len, kv_len)
    if (split < num_splits) & (lo < hi):
        in_group = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
        head_ok = in_group < GROUP
        heads = kv_head * GROUP + in_group
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        dv = tl.arange(0, BLOCK_DV)
        dv_ok = dv < V_HEAD_DIM
        q, q_unit = query_operand(tl.load(q_ptr + req * stride_q_req + heads[:, None] * stride_q_head + d[None, :],
                                          mask=head_ok[:, None] & d_ok[None, :], other=0.0))

        m = tl.full((BLOCK_H,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_H,), tl.float32)
        acc = tl.zeros((BLOCK_H, BLOCK_DV), tl.float32)
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < hi
            slots = tl.load(kv_indices_ptr + kv_start + n, mask=n_ok, other=0).to(tl.int64)
            k, k_scale = load_fp8_tile(k_data_ptr, k_scale_ptr, slots, kv_head, stride_k_slot, stride_k_head,
                                       stride_ks_slot, d, d_ok, n_ok, q.dtype, NATIVE_FP8, PTX)
            v, v_scale = load_fp8_tile(v_data_ptr, v_scale_ptr, slots, kv_head, stride_v_slot, stride_v_head,
                                       stride_vs_slot, dv, dv_ok, n_ok, q.dtype, NATIVE_FP8, PTX)
            m, l, acc = attend_tile(q, q_unit, k, k_scale, v, v_scale, n_ok[None, :], m, l, acc, qk_scale_log2,
                                    DOT_PRECISION)

        out_ptrs = (part_out_ptr + req * stride_po_req + heads[:, None] * stride_po_head
                    + split * stride_po_split + dv[None, :])
        tl.store(out_ptrs, acc / l[:, None], mask=head_ok[:, None] & dv_ok[None, :])
        tl.store(part_lse_ptr + req * stride_pl_req + heads * stride_pl_head + split, m + tl.log2(l), mask=head_ok)


@triton.jit
def _decode_merge_kernel(
    part_out_ptr, part_lse_ptr, kv_indptr_ptr, num_splits_ptr, out_ptr,
    stride_po_req, stride_po_head, stride_po_split,
    stride_pl_req, stride_pl_head,
    stride_o_req, stride_o_head,
    V_HEAD_DIM: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    kv_len = tl.load(kv_indptr_ptr + req + 1) - tl.load(kv_indptr_ptr + req)
    num_splits = tl.load(num_splits_ptr + req)
    split_len = tl.cdiv(kv_len, num_splits)
    dv = tl.arange(0, BLOCK_DV)
    dv_ok = dv < V_HEAD_DIM

    m = tl.full((), float("-inf"), tl.float32)
    total = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_DV,), tl.float32)
    for split in range(0, num_splits):
        if split * split_len < kv_len:  # splits past the context wrote nothing
            lse = tl.load(part_lse_ptr + req * stride_pl_req + head * stride_pl_head + split)
            part = tl.load(part_out_ptr + req * stride_po_req + head * stride_po_head + split * stride_po_split + dv,
                           mask=dv_ok, other=0.0)
            m_new = tl.maximum(m, lse)
            alpha = tl.exp2(m - m_new)
            weight = tl.exp2(lse - m_new)
            acc = acc * alpha + weight * part
            total = total * alpha + weight
            m = m_new
    out = tl.where(total > 0, acc / total, 0.0)  # an empty context attends to nothing: 0, not NaN
    tl.store(out_ptr + req * stride_o_req + head * stride_o_head + dv, out.to(out_ptr.dtype.element_ty), mask=dv_ok)


def default_num_kv_splits(kv_indptr: torch.Tensor, max_kv_splits: int) -> torch.Tensor:
    """One split per MIN_TOKENS_PER_SPLIT tokens of context, at most ``max_kv_splits``."""
    lengths = kv_indptr[1:] - kv_indptr[:-1]
    return ((lengths + MIN_TOKENS_PER_SPLIT - 1) // MIN_TOKENS_PER_SPLIT).clamp(1, max_kv_splits).to(torch.int32)


def paged_decode_attention(
    q: torch.Tensor,
    kv: PagedKV,
    sm_scale: float | None = None,
    *,
    num_kv_splits: torch.Tensor | None = None,
    max_kv_splits: int = 8,
    out: torch.Tensor | None = None,
    part_out: torch.Tensor | None = None,
    part_lse: torch.Tensor | None = None,
    tiles: DecodeTiles | None = None,
) -> torch.Tensor:
    """Decode attention of one query token per request over FP8 K/V read in place.

    Parameters
    ----------
    q : (batch, q_heads, head_dim) float16 / bfloat16 / float32. q head h reads kv head
        h // (q_heads // kv_heads).
    kv : batch views (``PagedKV`` with an indptr) of each request's context, e.g. the pool's
        views of SGLang's ``kv_indptr`` / ``kv_indices``. Their indptr may describe more
        sequences than ``batch`` (CUDA-graph replay passes buffers sized for the largest
        captured batch): only the first ``batch`` are read.
    sm_scale : softmax scale, default 1 / sqrt(head_dim).
    num_kv_splits : (batch,) int32, splits per request (<= max_kv_splits); default by context length.
    out : (batch, q_heads, v_head_dim) in q's dtype, written if given.
    part_out, part_lse : fp32 scratch (batch, q_heads, max_kv_splits, v_head_dim) and
        (batch, q_heads, max_kv_splits), e.g. SGLang's attn_logits / attn_lse buffers.
    tiles : keys a step, warps and pipeline stages; default ``decode_tiles`` (tuned per GPU model).

    Returns ``out``: (batch, q_heads, v_head_dim) in q's dtype.
    """
    batch, q_heads, head_dim = q.shape
    check_query(q, kv)
    kv_indptr, kv_indices = ragged(kv, "kv", batch)
    kv_heads, v_head_dim = kv.k.data.shape[1], kv.v.data.shape[2]
    if num_kv_splits is None:
        num_kv_splits = default_num_kv_splits(kv_indptr[:batch + 1], max_kv_splits)
    check_tensor("num_kv_splits", num_kv_splits, shape=(None,), dtypes=(torch.int32,), min_rows=batch)
    if out is None:
        out = q.new_empty((batch, q_heads, v_head_dim))
    check_tensor("out", out, shape=(batch, q_heads, v_head_dim), dtypes=(q.dtype,), last_dim_contiguous=True)
    if part_out is None:
        part_out = q.new_empty((batch, q_heads, max_kv_splits, v_head_dim), dtype=torch.float32)
        part_lse = q.new_empty((batch, q_heads, max_kv_splits), dtype=torch.float32)
    max_kv_splits = part_out.shape[2]
    check_tensor("part_out", part_out, shape=(None, q_heads, max_kv_splits, v_head_dim), dtypes=(torch.float32,),
                 last_dim_contiguous=True, min_rows=batch)
    check_tensor("part_lse", part_lse, shape=(None, q_heads, max_kv_splits), dtypes=(torch.float32,),
                 last_dim_contiguous=True, min_rows=batch)
    if batch == 0:
        return out

    group = q_heads // kv_heads
    # tl.dot needs at least 16 rows on GPU; the unused rows of a small group are masked.
    block_h = max(16, triton.next_power_of_2(group)) if gpu_tiles(q) else triton.next_power_of_2(group)
    block_h = min(block_h, 64)
    head_blocks = triton.cdiv(group, block_h)
    block_d, block_dv = triton.next_power_of_2(head_dim), triton.next_power_of_2(v_head_dim)
    qk_scale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)) * LOG2E
    if tiles is None:
        tiles = decode_tiles(q, head_dim)  # checked when its file was read
    elif why := tiles.why_not():
        raise ValueError(f"tiles {tiles.name}: {why}")
    k_data, k_scale, v_data, v_scale, *kv_strides = pointers(kv)
    _decode_split_kernel[(batch, kv_heads * head_blocks, max_kv_splits)](
        q, k_data, k_scale, v_data, v_scale,
        kv_indptr, kv_indices, num_kv_splits,
        part_out, part_lse,
        qk_scale,
        q.stride(0), q.stride(1),
        *kv_strides,
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1),
        GROUP=group, HEAD_BLOCKS=head_blocks, HEAD_DIM=head_dim, V_HEAD_DIM=v_head_dim,
        BLOCK_H=block_h, BLOCK_N=tiles.block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        DOT_PRECISION=dot_precision(q.dtype), NATIVE_FP8=native_fp8_decode(q), PTX=ptx_decode(q),
        **tiles.launch_options,
    )
    _decode_merge_kernel[(batch, q_heads)](
        part_out, part_lse, kv_indptr, num_kv_splits, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1),
        V_HEAD_DIM=v_head_dim, BLOCK_DV=block_dv,
    )
    return out
