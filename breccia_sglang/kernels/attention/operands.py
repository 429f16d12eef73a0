"""What the attention launchers share: checking the query and the ``PagedKV`` views they are
given, and turning the views into the raw pointers and strides a kernel reads.

A wrong shape, dtype or stride fails here with the argument's name, instead of as an
out-of-bounds read inside a kernel. Nothing here reads tensor values, so a launch stays free
of host synchronisation and can be captured into a CUDA graph.
"""

from __future__ import annotations

import torch

from ...kvcache import PagedKV
from ..launch import check_tensor

LOG2E = 1.4426950408889634  # the kernels use exp2: softmax scale * log2(e)
QUERY_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_query(q: torch.Tensor, kv: PagedKV, name: str = "kv") -> None:
    """q: (tokens, q_heads, head_dim); its heads must be a whole number of GQA groups of kv's."""
    check_tensor("q", q, dtypes=QUERY_DTYPES, last_dim_contiguous=True)
    check_kv(kv, q.shape[-1], name)
    kv_heads = kv.k.data.shape[1]
    if q.shape[1] % kv_heads:
        raise ValueError(f"q: {q.shape[1]} query heads is not a multiple of the pool's {kv_heads} kv heads")


def check_kv(kv: PagedKV, head_dim: int, name: str) -> None:
    """Both views over one layer's pool buffers, K with ``head_dim``, over the same tokens."""
    if not isinstance(kv, PagedKV):
        raise TypeError(f"{name}: expected a PagedKV (K and V views), got {type(kv).__name__}")
    k, v = kv
    check_tensor(f"{name}.k.data", k.data, shape=(None, None, head_dim), last_dim_contiguous=True)
    slots, kv_heads = k.data.shape[:2]
    check_tensor(f"{name}.v.data", v.data, shape=(slots, kv_heads, None), last_dim_contiguous=True)
    check_tensor(f"{name}.k.scale", k.scale, last_dim_contiguous=True)
    check_tensor(f"{name}.v.scale", v.scale, last_dim_contiguous=True)
    if k.slots is not v.slots and k.slots.data_ptr() != v.slots.data_ptr():
        raise ValueError(f"{name}: K and V views must share one slot list (the same tokens)")
    if (k.indptr is None) != (v.indptr is None) or (k.indptr is not None and k.indptr.data_ptr() != v.indptr.data_ptr()):
        raise ValueError(f"{name}: K and V views must share one indptr")


def ragged(kv: PagedKV, name: str, min_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch view's (indptr, slots): at least ``min_sequences`` sequences are described."""
    if kv.k.indptr is None:
        raise ValueError(f"{name}: expected batch views (with an indptr), got one-sequence views")
    check_tensor(f"{name}.indptr", kv.k.indptr, shape=(None,), min_rows=min_sequences + 1)
    return kv.k.indptr, kv.k.slots


def pointers(kv: PagedKV) -> tuple:
    """(k_data bytes, k_scale, v_data bytes, v_scale, and their slot / head strides) in the
    order every attention kernel takes them."""
    k, v = kv
    return (k.data.view(torch.uint8), k.scale, v.data.view(torch.uint8), v.scale,
            k.data.stride(0), k.data.stride(1), k.scale.stride(0),
            v.data.stride(0), v.data.stride(1), v.scale.stride(0))


def dot_precision(dtype: torch.dtype) -> str | None:
    # fp32 queries get true fp32 products (the GPU default, tf32, keeps 10 mantissa bits);
    # other dtypes take Triton's default.
    return "ieee" if dtype == torch.float32 else None
