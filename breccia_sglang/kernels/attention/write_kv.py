"""Write kernel: quantize new K or V to FP8 E4M3 with one scale per (token, kv head) and
store data and scale into their pool slots, in one pass.

Bit for bit the same as the torch path (``kvcache.store_kv``, i.e. breccia's
``Float8BlockScaling(block_k=head_dim)`` cast after NaN -> 0 and a clamp to +-KV_ABS_MAX):
scale = max(amax, 1e-10) / 448 with IEEE division, data = e4m3(x / scale) rounded to nearest
even. Divisions use ``div_rn`` because Triton's default fp32 division on GPU is approximate.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...kvcache import PagedScaledTensor
from ...kvcache.quant import KV_ABS_MAX
from ..launch import check_tensor
from .fp8_codec import E4M3_MAX, e4m3_encode

_KV_ABS_MAX = tl.constexpr(KV_ABS_MAX)


@triton.jit
def _write_kv_fp8_kernel(
    x_ptr, loc_ptr, data_ptr, scale_ptr,
    num_tokens,
    stride_x_token, stride_x_head,
    stride_data_slot, stride_data_head,
    stride_scale_slot,
    HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program: BLOCK_T tokens of one kv head; each (token, head) row gets its own scale.
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    head = tl.program_id(1)
    token_ok = tokens < num_tokens
    d = tl.arange(0, BLOCK_D)
    in_row = token_ok[:, None] & (d < HEAD_DIM)[None, :]
    x = tl.load(x_ptr + tokens[:, None].to(tl.int64) * stride_x_token + head * stride_x_head + d[None, :],
                mask=in_row, other=0.0)
    x = x.to(tl.float32)
    x = tl.where(x == x, x, 0.0)  # NaN -> 0 and clamp, as the torch path does before breccia's cast
    x = tl.minimum(tl.maximum(x, -_KV_ABS_MAX), _KV_ABS_MAX)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-10)  # breccia's floor, so a zero row stays finite
    scale = tl.math.div_rn(amax, tl.full((BLOCK_T,), E4M3_MAX, tl.float32))
    codes = e4m3_encode(tl.math.div_rn(x, scale[:, None]))
    slots = tl.load(loc_ptr + tokens, mask=token_ok, other=0).to(tl.int64)
    tl.store(data_ptr + slots[:, None] * stride_data_slot + head * stride_data_head + d[None, :], codes, mask=in_row)
    tl.store(scale_ptr + slots * stride_scale_slot + head, scale, mask=token_ok)


def write_kv_fp8(x: torch.Tensor, into: PagedScaledTensor) -> None:
    """Quantize ``x`` and store it at the slots of ``into``, a view of one layer's K (or V).

    Parameters
    ----------
    x : (num_tokens, num_kv_heads, head_dim) float16 / bfloat16 / float32, last dim contiguous.
    into : a one-sequence view of ``num_tokens`` slots (e.g. SGLang's out_cache_loc); its data
        and scales are written in place, one dequant multiplier per (token, head).
    """
    tokens, heads, head_dim = x.shape
    check_tensor("x", x, dtypes=(torch.float16, torch.bfloat16, torch.float32), last_dim_contiguous=True)
    if not isinstance(into, PagedScaledTensor) or into.is_ragged:
        raise TypeError(f"into: expected a one-sequence PagedScaledTensor, got {into!r}")
    check_tensor("into.slots", into.slots, shape=(tokens,))
    check_tensor("into.data", into.data, shape=(None, heads, head_dim), last_dim_contiguous=True)
    if tokens == 0:
        return
    block_t = 16
    _write_kv_fp8_kernel[(triton.cdiv(tokens, block_t), heads)](
        x, into.slots, into.data.view(torch.uint8), into.scale,
        tokens,
        x.stride(0), x.stride(1),
        into.data.stride(0), into.data.stride(1),
        into.scale.stride(0),
        HEAD_DIM=head_dim, BLOCK_T=block_t, BLOCK_D=triton.next_power_of_2(head_dim),
    )
