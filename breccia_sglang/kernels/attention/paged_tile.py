"""The inner step both attention kernels share: read a tile of FP8 K and V through slot
indices, apply the per-(token, head) scales in registers, and fold the tile into an
online softmax (flash-attention style, base-2 exponentials).

K's scales are applied to the logits, ``q . (s_k k) = s_k (q . k)``, so K's FP8 values only
need an exact conversion to the query dtype before ``tl.dot``. V's scales are applied to the
tile in registers: folding them into the probabilities instead (``p s_v``) would push small
products into fp16's subnormal range. Either way no dequantized copy of K or V exists in memory.
"""

import triton
import triton.language as tl

from .fp8_codec import e4m3_decode


@triton.jit
def load_fp8_tile(data_ptr, scale_ptr, slots, head, stride_slot, stride_head, stride_scale_slot,
                  d, d_ok, row_ok, dtype: tl.constexpr, NATIVE_FP8: tl.constexpr):
    """Rows ``slots`` of one kv head: (BLOCK_N, BLOCK_D) values in ``dtype`` and (BLOCK_N,) fp32 scales.
    Masked rows read as 0 with scale 0. ``NATIVE_FP8``: see ``e4m3_decode``."""
    codes = tl.load(data_ptr + slots[:, None] * stride_slot + head * stride_head + d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0)
    scale = tl.load(scale_ptr + slots * stride_scale_slot + head, mask=row_ok, other=0.0)
    return e4m3_decode(codes, dtype, NATIVE_FP8), scale


@triton.jit
def attend_tile(q, k, k_scale, v, v_scale, visible, m, l, acc, qk_scale_log2,
                DOT_PRECISION: tl.constexpr):
    """Fold one key/value tile into the running (max ``m``, sum ``l``, output ``acc``).

    q (M, D) and k (N, D), v (N, Dv) in the same dtype; visible (M, N) bool; m, l (M,) fp32;
    acc (M, Dv) fp32. ``qk_scale_log2`` is the softmax scale times log2(e).
    """
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    qk = qk * (k_scale * qk_scale_log2)[None, :]
    qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m, tl.max(qk, axis=1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    v = (v.to(tl.float32) * v_scale[:, None]).to(v.dtype)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l, acc
