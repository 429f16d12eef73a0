"""The emulated MoE kernel: SGLang's own native MoE loop over experts dequantized as they are used.

SGLang's ``moe_forward_native`` sorts the tokens by expert and, for each expert that got any,
reads ``layer.w13_weight[e]`` and ``layer.w2_weight[e]``. Here those reads dequantize expert
``e`` (breccia's values, ``weights.dequantize_as``, in the activation dtype), so the stacked
weights stay quantized in memory and only routed experts are ever expanded, one at a time.
It runs on any device and every recipe the dense emulated kernel serves: it is the reference
the fused kernels are compared against. On CUDA, where that loop's host sync would break CUDA
graphs, ``every_expert_moe`` computes the same layer with every expert on every token.

Under expert parallelism a pair routed to another rank's expert arrives as id -1, which SGLang's
loop cannot index. Choice k of a token goes to dropped expert L + k instead (L local experts;
one per choice, because the loop counts a token once per expert), whose weights are zero-width:
its up projection gives no columns and its down projection turns them into exact zeros, so
such a pair adds nothing and costs no GEMM work.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from breccia.layouts import PerTensor

from ... import names
from ...format.recipes import packs_two_per_byte
from ...weights import dequantize_as
from ...weights.dequant import has_nan_codes, scales_fit_bit_moves
from ..gemm.emulated import EmulatedDequantKernel
from .combine import routed_output
from .params import WEIGHTS, expert_params, stored_experts
from .spec import MoESpec


class _DequantizedExperts:
    """``weights[e]``: expert ``e`` of one stacked weight, dequantized to ``dtype``."""

    def __init__(self, stored, spec: MoESpec, dtype: torch.dtype, nan_free: bool, small_scales: bool):
        self.stored, self.spec, self.dtype = stored, spec, dtype
        self.nan_free, self.small_scales = nan_free, small_scales

    def __getitem__(self, e: int) -> torch.Tensor:
        s = self.stored
        widths = s.shard_widths if isinstance(self.spec.layout, PerTensor) else None
        return dequantize_as(s.data[e], s.scale[e], self.spec.recipe, self.spec.layout,
                             None if s.zero_point is None else s.zero_point[e], dtype=self.dtype,
                             shard_widths=widths, nan_free=self.nan_free, small_scales=self.small_scales)


class _WithDropped:
    """``experts[e]`` for a local expert, a zero-width weight for a dropped one (``e >= local``)."""

    def __init__(self, experts: _DequantizedExperts, local: int, empty: torch.Tensor):
        self.experts, self.local, self.empty = experts, local, empty

    def __getitem__(self, e: int) -> torch.Tensor:
        return self.empty if e >= self.local else self.experts[e]


class _ExpertLayer:
    """What ``moe_forward_native`` reads of a FusedMoE layer: this rank's experts, dequantized on
    read, then ``dropped_slots`` dropped experts (the module docstring)."""

    def __init__(self, layer, spec: MoESpec, dtype: torch.dtype, nan_free: bool, small_scales: bool,
                 dropped_slots: int = 0):
        self.local_experts = spec.num_experts
        self.num_experts = self.local_experts + dropped_slots
        w13, w2 = (_DequantizedExperts(stored_experts(layer, w), spec, dtype, nan_free, small_scales) for w in WEIGHTS)
        device, h = w13.stored.data.device, spec.hidden_size
        self.w13_weight = _WithDropped(w13, self.local_experts, torch.empty((0, h), dtype=dtype, device=device))
        self.w2_weight = _WithDropped(w2, self.local_experts, torch.empty((h, 0), dtype=dtype, device=device))

    def dropped_to_slots(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """-1 (another rank's expert) in choice k -> dropped expert local + k."""
        slots = self.local_experts + torch.arange(topk_ids.shape[1], device=topk_ids.device, dtype=topk_ids.dtype)
        return torch.where(topk_ids < 0, slots, topk_ids)


class EmulatedMoEKernel:
    """Per-expert dequantize in torch, then SGLang's native MoE (W8A16 / W4A16 numerics)."""

    name = names.GEMM_EMULATED
    priority = 0

    @classmethod
    def why_not(cls, spec: MoESpec) -> str | None:
        for w, (n, k) in spec.projections().items():
            why = EmulatedDequantKernel.why_not(_projection(spec, n, k))
            if why:
                return f"{w}: {why}"
        return None

    def create_weights(self, layer, spec: MoESpec, weight_loader) -> None:
        self.spec = spec
        expert_params(layer, spec, weight_loader)

    def create_moe_runner(self, layer, moe_runner_config) -> None:
        self.moe_runner_config = moe_runner_config

    def process_weights_after_loading(self, layer) -> None:
        # Once, so the forward pass reads nothing on the host (a CUDA graph captures it on a GPU):
        # whether any FP8 code is a NaN code, which the fast decodes would not keep NaN, and
        # whether the scales fit the E4M3 bit moves.
        self.nan_free = packs_two_per_byte(self.spec.recipe) or not any(
            has_nan_codes(getattr(layer, f"{w}_weight").data) for w in WEIGHTS)
        self.small_scales = all(scales_fit_bit_moves(stored_experts(layer, w).scale, self.spec.recipe)
                                for w in WEIGHTS)

    def apply(self, layer, dispatch_output):
        from sglang.srt.layers.moe.fused_moe_native import moe_forward_native

        x, config, topk = dispatch_output.hidden_states, self.moe_runner_config, dispatch_output.topk_output
        if not x.is_cuda:  # SGLang's own CPU MoE loop (it counts tokens per expert on the host)
            experts = _ExpertLayer(layer, self.spec, x.dtype, self.nan_free, self.small_scales,
                                   dropped_slots=topk.topk_ids.shape[1])
            topk = topk._replace(topk_ids=experts.dropped_to_slots(topk.topk_ids))
            return routed_output(moe_forward_native(experts, x, topk, config), x, config)
        # On CUDA: no host sync (CUDA graphs capture this)
        experts = _ExpertLayer(layer, self.spec, x.dtype, self.nan_free, self.small_scales)
        return routed_output(every_expert_moe(experts, x, topk, config), x, config)


def every_expert_moe(experts, x: torch.Tensor, topk_output, config) -> torch.Tensor:
    """The MoE layer ``moe_forward_native`` computes, without a host sync: every expert runs on
    every token, weighted by the router's weight for it (0 where it was not chosen). E times the
    compute of the routed tokens alone; the emulated kernel is the slow path anyway, and a CUDA
    graph can capture this. (M, H) -> (M, H) in x's dtype."""
    if config.apply_router_weight_on_input:
        raise NotImplementedError("breccia's emulated MoE: apply_router_weight_on_input")
    if config.activation not in ("silu", "gelu") or config.gemm1_alpha is not None:
        raise NotImplementedError(f"breccia's emulated MoE on CUDA: activation {config.activation!r} "
                                  f"(gemm1_alpha {config.gemm1_alpha})")
    topk_weights, topk_ids = topk_output[:2]  # StandardTopKOutput, or its Packed variant's four fields
    act = F.silu if config.activation == "silu" else F.gelu
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(experts.local_experts):  # a pair routed to another rank (-1) matches none
        gate_up = F.linear(x, experts.w13_weight[e])
        gate, up = gate_up.chunk(2, dim=-1)
        routed = (topk_weights * (topk_ids == e)).sum(dim=-1, dtype=torch.float32)  # (M,): 0 if not chosen
        out += F.linear(act(gate) * up, experts.w2_weight[e]).float() * routed[:, None]
    return out.to(x.dtype)


def _projection(spec: MoESpec, n: int, k: int):
    """One expert projection as a dense layer spec (N x K), for the checks dense kernels make."""
    return replace(spec, input_size_per_partition=k, output_partition_sizes=(n,))
