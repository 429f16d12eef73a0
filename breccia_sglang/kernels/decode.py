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

from ..paged.kv_quant import dequantize_kv
from .launch import check_tensor, fp32_on_gpu, gpu_tiles, native_fp8_decode
from .paged_tile import attend_tile, load_fp8_tile

LOG2E = 1.4426950408889634
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
    DOT_PRECISION: tl.constexpr, NATIVE_FP8: tl.constexpr,
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
        q = tl.load(q_ptr + req * stride_q_req + heads[:, None] * stride_q_head + d[None, :],
                    mask=head_ok[:, None] & d_ok[None, :], other=0.0)

        m = tl.full((BLOCK_H,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_H,), tl.float32)
        acc = tl.zeros((BLOCK_H, BLOCK_DV), tl.float32)
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < hi
            slots = tl.load(kv_indices_ptr + kv_start + n, mask=n_ok, other=0).to(tl.int64)
            k, k_scale = load_fp8_tile(k_data_ptr, k_scale_ptr, slots, kv_head, stride_k_slot, stride_k_head,
                                       stride_ks_slot, d, d_ok, n_ok, q.dtype, NATIVE_FP8)
            v, v_scale = load_fp8_tile(v_data_ptr, v_scale_ptr, slots, kv_head, stride_v_slot, stride_v_head,
                                       stride_vs_slot, dv, dv_ok, n_ok, q.dtype, NATIVE_FP8)
            m, l, acc = attend_tile(q, k, k_scale, v, v_scale, n_ok[None, :], m, l, acc, qk_scale_log2,
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
    k_data: torch.Tensor, k_scale: torch.Tensor,
    v_data: torch.Tensor, v_scale: torch.Tensor,
    kv_indptr: torch.Tensor, kv_indices: torch.Tensor,
    sm_scale: float | None = None,
    *,
    num_kv_splits: torch.Tensor | None = None,
    max_kv_splits: int = 8,
    out: torch.Tensor | None = None,
    part_out: torch.Tensor | None = None,
    part_lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode attention of one query token per request over FP8 K/V read in place.

    Parameters
    ----------
    q : (batch, q_heads, head_dim) float16 / bfloat16 / float32. q head h reads kv head
        h // (q_heads // kv_heads).
    k_data, v_data : (num_slots, kv_heads, head_dim | v_head_dim) uint8 (E4M3 bytes) or float8_e4m3fn.
    k_scale, v_scale : (num_slots, kv_heads) float32, the dequant multiplier of each slot's row.
    kv_indptr : (batch + 1,) int32 / int64; request b's context is kv_indices[kv_indptr[b]:kv_indptr[b+1]].
    kv_indices : (>= kv_indptr[-1],) int32 / int64 slot ids, in token order.
    sm_scale : softmax scale, default 1 / sqrt(head_dim).
    num_kv_splits : (batch,) int32, splits per request (<= max_kv_splits); default by context length.
    out : (batch, q_heads, v_head_dim) in q's dtype, written if given.
    part_out, part_lse : fp32 scratch (batch, q_heads, max_kv_splits, v_head_dim) and
        (batch, q_heads, max_kv_splits), e.g. SGLang's attn_logits / attn_lse buffers.

    Returns ``out``: (batch, q_heads, v_head_dim) in q's dtype.
    """
    batch, q_heads, head_dim = q.shape
    kv_heads, v_head_dim = k_data.shape[1], v_data.shape[2]
    check_tensor("q", q, dtypes=(torch.float16, torch.bfloat16, torch.float32), last_dim_contiguous=True)
    _check_pool_layer(k_data, k_scale, v_data, v_scale, head_dim)
    if q_heads % kv_heads:
        raise ValueError(f"q: {q_heads} query heads is not a multiple of the pool's {kv_heads} kv heads")
    # CUDA-graph replay passes SGLang's buffers sized for the largest captured batch: only
    # the first ``batch`` rows are read or written.
    check_tensor("kv_indptr", kv_indptr, shape=(None,), dtypes=(torch.int32, torch.int64), min_rows=batch + 1)
    check_tensor("kv_indices", kv_indices, shape=(None,), dtypes=(torch.int32, torch.int64))
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
    _decode_split_kernel[(batch, kv_heads * head_blocks, max_kv_splits)](
        q, k_data.view(torch.uint8), k_scale, v_data.view(torch.uint8), v_scale,
        kv_indptr, kv_indices, num_kv_splits,
        part_out, part_lse,
        qk_scale,
        q.stride(0), q.stride(1),
        k_data.stride(0), k_data.stride(1), k_scale.stride(0),
        v_data.stride(0), v_data.stride(1), v_scale.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1),
        GROUP=group, HEAD_BLOCKS=head_blocks, HEAD_DIM=head_dim, V_HEAD_DIM=v_head_dim,
        BLOCK_H=block_h, BLOCK_N=32 if fp32_on_gpu(q) else 64, BLOCK_D=block_d, BLOCK_DV=block_dv,
        DOT_PRECISION=_dot_precision(q.dtype), NATIVE_FP8=native_fp8_decode(q),
        num_warps=8 if fp32_on_gpu(q) else 4,
    )
    _decode_merge_kernel[(batch, q_heads)](
        part_out, part_lse, kv_indptr, num_kv_splits, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1),
        V_HEAD_DIM=v_head_dim, BLOCK_DV=block_dv,
    )
    return out


def _check_pool_layer(k_data, k_scale, v_data, v_scale, head_dim: int) -> None:
    fp8_bytes = (torch.uint8, torch.float8_e4m3fn)
    check_tensor("k_data", k_data, shape=(None, None, head_dim), dtypes=fp8_bytes, last_dim_contiguous=True)
    slots, kv_heads = k_data.shape[:2]
    check_tensor("v_data", v_data, shape=(slots, kv_heads, None), dtypes=fp8_bytes, last_dim_contiguous=True)
    check_tensor("k_scale", k_scale, shape=(slots, kv_heads), dtypes=(torch.float32,), last_dim_contiguous=True)
    check_tensor("v_scale", v_scale, shape=(slots, kv_heads), dtypes=(torch.float32,), last_dim_contiguous=True)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 queries get true fp32 products (the GPU default, tf32, keeps 10 mantissa bits);
    # other dtypes take Triton's default.
    return "ieee" if dtype == torch.float32 else None


# --- the fp32 reference ------------------------------------------------------------------

def dequantized_rows(data: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """(len(slots), kv_heads, dim) fp32: pool rows through breccia's dequantize."""
    return dequantize_kv(data[slots].view(torch.float8_e4m3fn), scale[slots])


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float,
                        causal_offset: int | None = None) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v in fp32 with GQA. q (M, Hq, D); k, v (N, Hkv, D*).
    With ``causal_offset`` c, query i sees keys j <= c + i."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    logits = torch.einsum("mhd,nhd->hmn", q.float(), k) * sm_scale
    if causal_offset is not None:
        hidden = torch.arange(k.shape[0])[None, :] > causal_offset + torch.arange(q.shape[0])[:, None]
        logits = logits.masked_fill(hidden.to(logits.device), float("-inf"))
    return torch.einsum("hmn,nhd->mhd", logits.softmax(dim=-1), v)


def paged_decode_attention_reference(q, k_data, k_scale, v_data, v_scale, kv_indptr, kv_indices,
                                     sm_scale: float | None = None) -> torch.Tensor:
    """What ``paged_decode_attention`` computes, in fp32 with breccia's dequantize: (batch, q_heads, v_head_dim)."""
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    outs = []
    for b in range(q.shape[0]):
        slots = kv_indices[kv_indptr[b]:kv_indptr[b + 1]].long()
        k, v = dequantized_rows(k_data, k_scale, slots), dequantized_rows(v_data, v_scale, slots)
        outs.append(reference_attention(q[b:b + 1], k, v, sm_scale)[0])
    return torch.stack(outs)
