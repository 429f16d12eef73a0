"""Our MoE W4A16 kernel as SGLang's FusedMoE calls it (``integration/moe/triton_w4a16.py``), under
TRITON_INTERPRET=1: breccia experts loaded as FusedMoE's loader stacks them, SGLang's own
dispatch, top-k and runner-config types, against the whole layer in fp32 on breccia's
dequantized experts. Routing is uneven (``test_moe_triton.routing``: expert 3 gets nothing)."""

from __future__ import annotations

import breccia
import pytest
import torch
import torch.nn.functional as F

from breccia_sglang.format import make_recipe
from breccia_sglang.integration.moe.triton_w4a16 import TritonMoEW4A16Kernel

from ..kernels.routed import with_remote_pairs
from .test_moe_triton import TOP_K, prepared_layer, routing

RECIPES = [make_recipe("nvfp4"), make_recipe("int4", group_size=32),
           make_recipe("int4", group_size=64, symmetric=False),
           breccia.INT4Scaling(group_size=32, symmetric=True, signed=False)]
FP16 = 2.0**-11


def prepared(recipe, activation: str, gen: torch.Generator, routed_scaling_factor=None, kernel=TritonMoEW4A16Kernel):
    from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig

    kernel, layer, experts, _ = prepared_layer(kernel, recipe, 128, 64, gen)
    kernel.create_moe_runner(layer, MoeRunnerConfig(activation=activation, routed_scaling_factor=routed_scaling_factor))
    return kernel, layer, experts


def dispatched(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor):
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    return StandardDispatchOutput(x, None, StandardTopKOutput(topk_weights, topk_ids, None))


def layer_in_fp32(experts, x, topk_weights, topk_ids, act):
    """(M, H) fp32 and a bound on the fp16 kernel's error for each output, from magnitudes.

    The kernel rounds: each dequantized weight to fp16 (the dense kernel's 2^-11, twice with the
    output's rounding, on |x| @ |W|^T: e1 below); gate and up to fp16, then act(gate) * up to
    fp16 (both within e1's output rounding, plus 2^-11 of |act(gate) * up| for the product);
    down's weights and each pair's output to fp16 again (twice 2^-11 of |h| @ |W2|^T), summed in
    fp32 and rounded once more (2^-11). SiLU and GELU change by at most 1.13x their input's change,
    so an error in gate moves act(gate) * up by at most 1.13 |up| times it."""
    out = torch.zeros(x.shape[0], experts["w2"][0].shape[0])
    bound = torch.zeros_like(out)
    xf = x.float()
    for t in range(x.shape[0]):
        for k in range(TOP_K):
            e, w = int(topk_ids[t, k]), float(topk_weights[t, k])
            gate, up = (xf[t] @ experts["w13"][e].T).chunk(2)
            e_gate, e_up = (2 * FP16 * (xf[t].abs() @ experts["w13"][e].abs().T) + 1e-6).chunk(2)
            h = act(gate) * up
            e_h = 1.13 * e_gate * (up.abs() + e_up) + act(gate).abs() * e_up + FP16 * (h.abs() + 1.13 * e_gate *
                                                                                      (up.abs() + e_up))
            out[t] += w * (experts["w2"][e] @ h)
            bound[t] += w * (experts["w2"][e].abs() @ e_h + 2 * FP16 * (experts["w2"][e].abs() @ (h.abs() + e_h)))
    return out, bound + FP16 * out.abs() + 1e-6


@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name + str(getattr(r, "group_size", "")))
@pytest.mark.parametrize("m", [1, 7])
def test_the_moe_layer_matches_fp32_on_breccias_dequantized_experts(recipe, activation, m):
    gen = torch.Generator().manual_seed(m + RECIPES.index(recipe))
    kernel, layer, experts = prepared(recipe, activation, gen)
    x = torch.randn(m, 128, generator=gen).to(torch.float16)
    topk_ids = routing(m, gen)
    topk_weights = torch.rand(m, TOP_K, generator=gen)
    out = kernel.apply(layer, dispatched(x, topk_weights, topk_ids)).hidden_states
    ref, bound = layer_in_fp32(experts, x, topk_weights, topk_ids, F.silu if activation == "silu" else F.gelu)
    assert out.dtype == torch.float16 and out.shape == (m, 128)
    excess = (out.float() - ref).abs() - bound
    assert excess.max().item() <= 0, (out.float() - ref).abs().max().item()
    # The bound is loose (worst-case magnitudes), but not so loose that losing each token's
    # second expert would pass it.
    without_second, _ = layer_in_fp32(experts, x, topk_weights * torch.tensor([1.0, 0.0]), topk_ids,
                                      F.silu if activation == "silu" else F.gelu)
    assert ((out.float() - without_second).abs() > bound).any()


def test_the_pairs_of_other_ranks_experts_add_nothing():
    # Expert parallelism: SGLang's dispatcher hands -1 for a pair whose expert is on another rank;
    # the layer is then the one without those pairs (FusedMoE's all-reduce adds the other ranks').
    gen = torch.Generator().manual_seed(10)
    kernel, layer, experts = prepared(make_recipe("int4", group_size=32, symmetric=False), "silu", gen)
    x = torch.randn(7, 128, generator=gen).to(torch.float16)
    topk_ids, topk_weights = with_remote_pairs(routing(7, gen)), torch.rand(7, TOP_K, generator=gen)
    out = kernel.apply(layer, dispatched(x, topk_weights, topk_ids)).hidden_states
    mine = topk_ids >= 0
    ref, bound = layer_in_fp32(experts, x, topk_weights * mine, topk_ids.clamp_min(0), F.silu)
    assert ((out.float() - ref).abs() <= bound).all(), (out.float() - ref).abs().max().item()
    assert torch.equal(out[0], torch.zeros(128, dtype=torch.float16))  # both its experts elsewhere


def test_an_empty_batch_gives_an_empty_output():
    # SGLang runs idle batches (data-parallel attention ranks with no request) through the layer.
    kernel, layer, _ = prepared(make_recipe("nvfp4"), "silu", torch.Generator().manual_seed(2))
    x = torch.zeros((0, 128), dtype=torch.float16)
    out = kernel.apply(layer, dispatched(x, torch.zeros((0, TOP_K)), torch.zeros((0, TOP_K), dtype=torch.int32)))
    assert out.hidden_states.shape == (0, 128) and out.hidden_states.dtype == torch.float16


def test_the_routers_scaling_factor_is_left_to_the_model_off_cuda():
    # DeepSeek multiplies by it itself off CUDA; on CUDA the MoE kernel applies it (combine.py).
    gen = torch.Generator().manual_seed(9)
    kernel, layer, _ = prepared(make_recipe("int4", group_size=32), "silu", gen, routed_scaling_factor=2.5)
    plain, _, _ = prepared(make_recipe("int4", group_size=32), "silu", torch.Generator().manual_seed(9))
    x = torch.randn(3, 128, generator=gen).to(torch.float16)
    topk_ids, topk_weights = routing(3, gen), torch.rand(3, TOP_K, generator=gen)
    scaled = kernel.apply(layer, dispatched(x, topk_weights, topk_ids)).hidden_states
    assert torch.equal(scaled, plain.apply(layer, dispatched(x, topk_weights, topk_ids)).hidden_states)


def test_an_activation_it_does_not_compute_is_refused_naming_the_layer():
    from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig

    kernel, layer, _, _ = prepared_layer(TritonMoEW4A16Kernel, make_recipe("nvfp4"), 128, 64, torch.Generator())
    with pytest.raises(NotImplementedError, match=r"model\.layers\.0\.mlp\.experts: triton-moe-w4a16 .*'relu2'"):
        kernel.create_moe_runner(layer, MoeRunnerConfig(activation="relu2"))
