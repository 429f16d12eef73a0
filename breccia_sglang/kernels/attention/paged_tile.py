"""The inner step both attention kernels share: read a tile of FP8 K and V through slot
indices, apply the per-(token, head) scales, and fold the tile into an online softmax
(flash-attention style, base-2 exponentials). No dequantized copy of K or V exists in memory.

fp16 / bf16 queries take tensor-core dots in fp16: the codes are exact in fp16 (one conversion
per pair on sm_89+, three instructions a pair by inline PTX before, against three per code for
bf16), the query rows are exact in
fp16 over a power-of-two unit (``fp16_operands``), and the scales multiply fp32 results or
small tiles instead of every K and V element. What bounds a decode step is how many instructions
each cache byte costs (``benchmarks/compile_kernels.py`` counts them): K's scales go on the
logits, ``q . (s_k k) = s_k (q . k)``; V's go on the probabilities, ``sum_t p_t (s_t v_t)`` with
``p_t s_t / s_max`` in fp16 (the tile's largest scale ``s_max`` keeps them at most 1, so only
negligible products fall below fp16's normal range) and ``s_max`` on the fp32 result. fp32
queries keep exact fp32 dots over values scaled in fp32.
"""

import triton
import triton.language as tl

from ..fp16_operands import fp16_operand
from .fp8_codec import e4m3_as_fp16, e4m3_decode, e4m3_fp16_undo


@triton.jit
def query_operand(q):
    """A query tile as (its dot operand, its rows' units): fp32 as it is, else exact fp16."""
    if q.dtype == tl.float32:
        return q, tl.full((q.shape[0],), 1.0, tl.float32)
    else:
        return fp16_operand(q)


@triton.jit
def load_fp8_tile(data_ptr, scale_ptr, slots, head, stride_slot, stride_head, stride_scale_slot,
                  d, d_ok, row_ok, dtype: tl.constexpr, NATIVE_FP8: tl.constexpr, PTX: tl.constexpr):
    """Rows ``slots`` of one kv head as (BLOCK_N, BLOCK_D) values and (BLOCK_N,) fp32 scales whose
    products are the cache's entries: fp32 values for fp32 queries (``dtype``), else the codes in
    fp16. Masked rows read as 0 with scale 0. ``NATIVE_FP8``, ``PTX``: see ``e4m3_decode``."""
    codes = tl.load(data_ptr + slots[:, None] * stride_slot + head * stride_head + d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0)
    scale = tl.load(scale_ptr + slots * stride_scale_slot + head, mask=row_ok, other=0.0)
    if dtype == tl.float32:
        return e4m3_decode(codes, tl.float32, NATIVE_FP8, PTX), scale
    else:
        return e4m3_as_fp16(codes, NATIVE_FP8, PTX), scale * e4m3_fp16_undo(NATIVE_FP8)


# Accumulator elements (query rows x V columns) up to which a V tile is converted in place: the
# decode tile (16 x 128) and extend's at head_dim 64 (64 x 64). Extend's 64 x 128 already holds
# 255 registers, and the fp16 tile staged for the transposing load then spills 144-192 B per
# thread on sm_80 / sm_89 (8-32 B without) for no fewer instructions; sm_90 is unchanged either way.
V_IN_PLACE_UP_TO = tl.constexpr(4096)


@triton.jit
def converted_in_place(v):
    """``v`` as it is: the values, and where they were computed.

    A no-op for the values that keeps Triton from moving the producer of ``v`` (the E4M3 -> fp16
    conversion of a V tile) into ``tl.dot``'s operand layout. There, each thread would need the
    codes of two keys (rows of the cache) side by side, so it would gather them from shared
    memory one byte at a time (64 ``LDS.U8`` a 64-key tile per thread, plus as many packing
    instructions). Kept where the codes were loaded, a thread converts 16 contiguous codes of
    a row at once (one ``LDS.128``, 8 conversions), and Triton moves the fp16 tile into the
    operand layout through shared memory with transposing ``ldmatrix``: 12-19% fewer
    instructions in the decode loop on sm_80-90, 17-23% in extend's at head_dim 64 on sm_80 /
    sm_89 (``benchmarks/compile_kernels.py``). The reshape / split / join only regroup each
    thread's registers; nothing moves.
    """
    a, b = tl.split(tl.reshape(v, (v.shape[0], v.shape[1] // 2, 2)))
    return tl.reshape(tl.join(a, b), (v.shape[0], v.shape[1]))


@triton.jit
def attend_tile(q, q_unit, k, k_scale, v, v_scale, visible, m, l, acc, qk_scale_log2,
                DOT_PRECISION: tl.constexpr):
    """Fold one key/value tile into the running (max ``m``, sum ``l``, output ``acc``).

    q (M, D) fp32 or fp16 with its rows' units (M,) (``query_operand``); k (N, D), v (N, Dv) and
    their (N,) scales as ``load_fp8_tile`` gives them for that query dtype; visible (M, N) bool;
    m, l (M,) fp32; acc (M, Dv) fp32. ``qk_scale_log2`` is the softmax scale times log2(e).
    """
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    qk = qk * q_unit[:, None] * (k_scale * qk_scale_log2)[None, :]
    qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m, tl.max(qk, axis=1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    if v.dtype == tl.float32:
        acc = acc * alpha[:, None] + tl.dot(p, v * v_scale[:, None], input_precision=DOT_PRECISION)
    else:
        v_top = tl.max(v_scale, axis=0)
        share = v_scale / tl.maximum(v_top, 1e-30)  # at most 1; 0 where the whole tile is masked
        if acc.shape[0] * acc.shape[1] <= V_IN_PLACE_UP_TO:
            v = converted_in_place(v)
        acc = acc * alpha[:, None] + tl.dot((p * share[None, :]).to(tl.float16), v) * v_top
    return m_new, l, acc
