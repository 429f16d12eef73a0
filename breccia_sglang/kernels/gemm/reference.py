"""The fp32 torch references the weight-only GEMMs are tested against: the codes (4-bit ones
unpacked) decoded with breccia's tables (``weights``), scaled in fp32 as breccia's dequantize
scales them, then a plain fp32 matmul."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...weights.codes import decode_e2m1, decode_fp8, decode_int4
from ...weights.packing import unpack_low_first


def w4a16_weight(packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None, *, group: int,
                 codes: str) -> torch.Tensor:
    """The dequantized weight, (N, K) fp32: (value - z) * s, or value * s without zero points."""
    unpacked = unpack_low_first(packed)
    values = decode_e2m1(unpacked) if codes == "e2m1" else decode_int4(unpacked, signed=codes == "int4")
    rows, k = values.shape
    s = decode_fp8(scales, "E4M3") if scales.dtype == torch.uint8 else scales.to(torch.float32)
    values = values.view(rows, k // group, group)
    if zero_points is not None:
        values = values - zero_points.to(torch.float32)[..., None]
    return (values * s[..., None]).view(rows, k)


def w4a16_reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None,
                    *, group: int, codes: str) -> torch.Tensor:
    """What ``w4a16_matmul`` computes, (M, N) fp32: x in fp32 times the fp32 dequantized weight."""
    return x.to(torch.float32) @ w4a16_weight(packed, scales, zero_points, group=group, codes=codes).T


def w8a16_weight(weight: torch.Tensor, scales: torch.Tensor, *, group: int | None) -> torch.Tensor:
    """The dequantized FP8 E4M3 weight, (N, K) fp32: code * scale, a scale per row and K group
    (``group=None``: one per row)."""
    values = decode_fp8(weight, "E4M3")
    rows, k = values.shape
    if group is None:
        return values * scales.reshape(rows, 1)
    return (values.view(rows, k // group, group) * scales[..., None]).view(rows, k)


def w8a16_reference(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, *, group: int | None) -> torch.Tensor:
    """What ``w8a16_matmul`` computes, (M, N) fp32: x in fp32 times the fp32 dequantized weight."""
    return x.to(torch.float32) @ w8a16_weight(weight, scales, group=group).T


def moe_reference(x: torch.Tensor, expert_weight: Callable[[int], torch.Tensor], n: int, topk_ids: torch.Tensor,
                  *, pairs_per_x_row: int, routed_weights: torch.Tensor | None = None) -> torch.Tensor:
    """What the MoE weight-only kernels compute, (tokens * top_k, n) fp32: for each pair p
    (token t, its k-th expert e = topk_ids[t, k]), x[p // pairs_per_x_row] in fp32 times
    ``expert_weight(e)`` (expert e's (n, K) fp32 dequantized weight), times routed_weights[p]
    when given; zero for e = -1 (another rank's expert). One expert at a time, plainly."""
    experts = topk_ids.flatten().to(torch.int64)
    rows = x.to(torch.float32)[torch.arange(experts.numel()) // pairs_per_x_row]
    out = torch.zeros((experts.numel(), n), dtype=torch.float32)
    for e in experts[experts >= 0].unique().tolist():
        mine = experts == e
        out[mine] = rows[mine] @ expert_weight(e).T
    return out if routed_weights is None else out * routed_weights.to(torch.float32)[:, None]


def moe_w4a16_reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                        zero_points: torch.Tensor | None, topk_ids: torch.Tensor, *, group: int, codes: str,
                        pairs_per_x_row: int, routed_weights: torch.Tensor | None = None) -> torch.Tensor:
    """What ``moe_w4a16_matmul`` computes (``moe_reference`` over 4-bit experts)."""
    return moe_reference(x, lambda e: w4a16_weight(packed[e], scales[e], None if zero_points is None else zero_points[e],
                                                   group=group, codes=codes),
                         packed.shape[1], topk_ids, pairs_per_x_row=pairs_per_x_row, routed_weights=routed_weights)


def moe_w8a16_reference(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, topk_ids: torch.Tensor, *,
                        group: int | None, pairs_per_x_row: int,
                        routed_weights: torch.Tensor | None = None) -> torch.Tensor:
    """What ``moe_w8a16_matmul`` computes (``moe_reference`` over FP8 E4M3 experts)."""
    return moe_reference(x, lambda e: w8a16_weight(weight[e], scales[e], group=group), weight.shape[1],
                         topk_ids, pairs_per_x_row=pairs_per_x_row, routed_weights=routed_weights)
