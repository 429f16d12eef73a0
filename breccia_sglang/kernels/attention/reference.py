"""The fp32 torch references the attention kernels are tested against.

They read the cache through ``PagedScaledTensor.dequantize`` (breccia's dequantize of each
token's FP8 row with its scale) and compute attention with a plain softmax in fp32. The
write kernel's reference is ``kvcache.store_kv``, breccia's cast.
"""

from __future__ import annotations

import math

import torch

from ...kvcache import PagedKV, PagedScaledTensor, store_kv

write_kv_fp8_reference = store_kv  # same arguments: (x, into)


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


def paged_decode_attention_reference(q: torch.Tensor, kv: PagedKV, sm_scale: float | None = None) -> torch.Tensor:
    """What ``paged_decode_attention`` computes: (batch, q_heads, v_head_dim) fp32."""
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    outs = []
    for b in range(q.shape[0]):
        k, v = kv.k.sequence(b).dequantize(), kv.v.sequence(b).dequantize()
        outs.append(reference_attention(q[b:b + 1], k, v, sm_scale)[0])
    return torch.stack(outs)


def paged_extend_attention_reference(q: torch.Tensor, prefix: PagedKV, new: PagedKV,
                                     sm_scale: float | None = None) -> torch.Tensor:
    """What ``paged_extend_attention`` computes: (total_new_tokens, q_heads, v_head_dim) fp32.
    Each request's context is its prefix view concatenated with its new tokens' view."""
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    outs, row = [], 0
    for b in range(new.k.num_sequences):
        k = PagedScaledTensor.cat([prefix.k.sequence(b), new.k.sequence(b)])
        v = PagedScaledTensor.cat([prefix.v.sequence(b), new.v.sequence(b)])
        rows, cached = len(new.k.sequence(b)), len(prefix.k.sequence(b))
        outs.append(reference_attention(q[row:row + rows], k.dequantize(), v.dequantize(), sm_scale,
                                        causal_offset=cached))
        row += rows
    return torch.cat(outs)
