"""Per-(token, kv head) dynamic FP8 quantization of K and V, in breccia's terms.

One head's ``head_dim`` values of one token form one block: breccia's
``Float8BlockScaling(block_k=head_dim)`` with ``PerBlockK(head_dim)``. The scale is
computed when the token is written (amax / 448), so there is no calibration file and no
1.0 default; a page's scales are fixed once its tokens are written.

Non-finite and huge activations are made safe before the cast, so one bad token cannot
poison the attention of every later token and every request that shares its page: NaN is
stored as 0 and values are clamped to +-KV_ABS_MAX, which bounds every scale (at
KV_ABS_MAX / 448) and keeps dequantized K/V inside fp16's range, where the attention math
cannot overflow. Finite inputs inside that range are cast exactly as breccia casts them.
"""

from __future__ import annotations

import breccia
import torch

FP8 = torch.float8_e4m3fn
KV_ABS_MAX = 65504.0  # fp16's largest finite value; real K/V stay orders of magnitude below


def kv_recipe(head_dim: int) -> breccia.Float8BlockScaling:
    return breccia.Float8BlockScaling(fp8_format="E4M3", block_k=head_dim)


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize K or V for the cache.

    Parameters
    ----------
    x : (num_tokens, num_kv_heads, head_dim), any float dtype.

    Returns
    -------
    data : (num_tokens, num_kv_heads, head_dim) float8_e4m3fn
    scale : (num_tokens, num_kv_heads) float32, the dequant multiplier of each (token, head).
    """
    if x.ndim != 3:
        raise ValueError(f"quantize_kv expects (tokens, heads, head_dim), got shape {tuple(x.shape)}")
    safe = torch.nan_to_num(x.float(), nan=0.0).clamp_(-KV_ABS_MAX, KV_ABS_MAX)
    scaled = breccia.cast(safe, kv_recipe(x.shape[-1]))
    return scaled.data, scaled.scale.squeeze(-1)


def dequantize_kv(data: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of ``quantize_kv``: (T, H, D) fp8 + (T, H) fp32 -> (T, H, D) fp32."""
    scaled = breccia.from_buffer(data, scale.unsqueeze(-1), kv_recipe(data.shape[-1]), breccia.PerBlockK(data.shape[-1]))
    return breccia.dequantize(scaled)
