"""The stacked expert parameters of a breccia MoE layer, as SGLang's FusedMoE weight loader fills them.

Per weight, ``w13`` (gate then up, (E, 2I, ...)) and ``w2`` (down, (E, H, ...)):

- ``{w}_weight``: the codes, as the dense layers hold them (``weights.packing.served_codes``):
  float8_e4m3fn for per-tensor and block FP8, uint8 for MXFP8, and NVFP4 / INT4 packed two per
  byte, (E, N, K / 2);
- ``{w}_weight_scale``: per-tensor FP8, one fp32 per expert and shard ((E, 2) and (E,), SGLang's
  TENSOR scales); every other recipe one scale per row and K block, (E, N, K / B) (GROUP);
- ``{w}_weight_zero_point``: asymmetric INT4, (E, N, K / G) (GROUP).

FusedMoE's loader puts w1 in the first half of w13's rows and w3 in the second, narrows rows
(w13) or K (w2) for tensor parallelism, and picks how to load a scale by the parameter's
``quant_method`` attribute; a packed K narrows by K / 2 bytes and block scales by K / B
columns, both whole because B and G are even and (I / tp) % B == 0 is checked (``MoESpec``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from breccia.layouts import PerTensor

from ...format.recipes import packs_two_per_byte, stores_native_fp8
from ...weights.codes import decode_e8m0
from ...weights.dequant import row_scales
from ..sglang_params import replace_param
from .spec import MoESpec

WEIGHTS = ("w13", "w2")


def expert_params(layer, spec: MoESpec, weight_loader: Callable) -> None:
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoeWeightScaleSupported
    from sglang.srt.utils import set_weight_attrs

    per_tensor = isinstance(spec.layout, PerTensor)
    code_dtype = torch.float8_e4m3fn if stores_native_fp8(spec.recipe) else torch.uint8
    scale_kind = FusedMoeWeightScaleSupported.TENSOR if per_tensor else FusedMoeWeightScaleSupported.GROUP

    def add(name: str, shape: tuple, dtype: torch.dtype, scale: bool = False) -> None:
        param = torch.nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False)
        layer.register_parameter(name, param)
        set_weight_attrs(param, {"weight_loader": weight_loader, **({"quant_method": scale_kind.value} if scale else {})})

    e = spec.num_experts
    for w, (n, k) in spec.projections().items():
        add(f"{w}_weight", (e, n, k // 2 if packs_two_per_byte(spec.recipe) else k), code_dtype)
        if per_tensor:
            add(f"{w}_weight_scale", (e, 2) if w == "w13" else (e,), torch.float32, scale=True)
            continue
        add(f"{w}_weight_scale", (e, n, k // spec.block), spec.scale_dtype, scale=True)
        if spec.has_zero_point:
            add(f"{w}_weight_zero_point", (e, n, k // spec.block), spec.scale_dtype, scale=True)


@dataclass(frozen=True)
class StoredExperts:
    """One stacked weight of a breccia MoE layer as its parameters hold it (plain tensors)."""

    data: torch.Tensor  # (E, N, K) codes, or (E, N, K / 2) packed
    scale: torch.Tensor  # (E, 2) / (E,) per-tensor, or (E, N, K / B)
    zero_point: torch.Tensor | None  # (E, N, K / G)
    shard_widths: tuple[int, ...] | None  # w13: rows of w1 and w3 (their per-tensor scales)


def stored_experts(layer, w: str) -> StoredExperts:
    zero_point = getattr(layer, f"{w}_weight_zero_point", None)
    data = getattr(layer, f"{w}_weight").data
    widths = (data.shape[1] // 2,) * 2 if w == "w13" else None
    return StoredExperts(data, getattr(layer, f"{w}_weight_scale").data,
                         None if zero_point is None else zero_point.data, widths)


def serve_fp8_experts(layer, spec: MoESpec) -> None:
    """FP8 experts' parameters as the W8A8 and W8A16 MoE kernels read them, converted once after
    loading: MXFP8's uint8 E4M3 bytes viewed as float8 and its E8M0 exponents as their exact
    fp32 powers of two; per-tensor scales (one per expert and shard) repeated over each shard's
    rows, (E, N, 1): exact, where SGLang's own per-tensor path requantizes w1 and w3 to one
    scale. Block FP8 keeps its (E, N, K / B) scales, in fp32."""
    for w in WEIGHTS:
        data, scale = getattr(layer, f"{w}_weight").data, getattr(layer, f"{w}_weight_scale").data
        if spec.recipe.name == "mxfp8":
            data, scale = data.view(torch.float8_e4m3fn), decode_e8m0(scale)
        elif isinstance(spec.layout, PerTensor):
            widths = stored_experts(layer, w).shard_widths
            scale = torch.stack([row_scales(s, widths, data.shape[1]) for s in scale])[..., None]
        replace_param(layer, f"{w}_weight", data)
        replace_param(layer, f"{w}_weight_scale", scale.to(torch.float32).contiguous())
