"""Our MoE W8A16 kernel as SGLang's FusedMoE calls it (``integration/moe/triton_w8a16.py``), under
TRITON_INTERPRET=1: FP8 experts of every form (per-tensor, 1x16 / 1x64 blocks, MXFP8) loaded as
FusedMoE's loader stacks them and prepared once, SGLang's own dispatch, top-k and runner-config
types, against the whole layer in fp32 on breccia's dequantized experts, with the W4A16 layer
test's bound (``test_moe_w4a16.layer_in_fp32``: the kernel rounds each dequantized weight to
fp16 at most once, as the W4A16 kernel does)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from breccia_sglang.format import make_recipe
from breccia_sglang.integration.moe.triton_w8a16 import TritonMoEW8A16Kernel

from .test_moe_triton import TOP_K, prepared_layer, routing
from .test_moe_w4a16 import dispatched, layer_in_fp32, prepared

RECIPES = [make_recipe("fp8"), make_recipe("fp8-block", block_k=64), make_recipe("fp8-block", block_k=16),
           make_recipe("mxfp8")]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name + str(getattr(r, "block_k", "")))
@pytest.mark.parametrize("m", [1, 7])
def test_the_moe_layer_matches_fp32_on_breccias_dequantized_experts(recipe, m):
    gen = torch.Generator().manual_seed(m + RECIPES.index(recipe))
    activation = "silu" if m == 1 else "gelu"
    kernel, layer, experts = prepared(recipe, activation, gen, kernel=TritonMoEW8A16Kernel)
    x = torch.randn(m, 128, generator=gen).to(torch.float16)
    topk_ids = routing(m, gen)
    topk_weights = torch.rand(m, TOP_K, generator=gen)
    out = kernel.apply(layer, dispatched(x, topk_weights, topk_ids)).hidden_states
    act = F.silu if activation == "silu" else F.gelu
    ref, bound = layer_in_fp32(experts, x, topk_weights, topk_ids, act)
    assert out.dtype == torch.float16 and out.shape == (m, 128)
    excess = (out.float() - ref).abs() - bound
    assert excess.max().item() <= 0, (out.float() - ref).abs().max().item()
    # Not so loose a bound that losing each token's second expert would pass it.
    without_second, _ = layer_in_fp32(experts, x, topk_weights * torch.tensor([1.0, 0.0]), topk_ids, act)
    assert ((out.float() - without_second).abs() > bound).any()


def test_per_tensor_scales_become_one_per_row_of_each_shard():
    # Each expert's w1 and w3 keep their own scale over their rows (exact), not one requantized scale.
    kernel, layer, _, casts = prepared_layer(TritonMoEW8A16Kernel, make_recipe("fp8"), 128, 64,
                                             torch.Generator().manual_seed(3))
    scale = layer.w13_weight_scale
    assert scale.shape == (len(casts["w13"]), 128, 1) and scale.dtype == torch.float32
    for e, (gate, up) in enumerate(casts["w13"]):
        assert torch.equal(scale[e, :64, 0], gate.scale.float().expand(64))
        assert torch.equal(scale[e, 64:, 0], up.scale.float().expand(64))


def test_an_empty_batch_gives_an_empty_output():
    kernel, layer, _ = prepared(make_recipe("mxfp8"), "silu", torch.Generator().manual_seed(2),
                                kernel=TritonMoEW8A16Kernel)
    x = torch.zeros((0, 128), dtype=torch.float16)
    out = kernel.apply(layer, dispatched(x, torch.zeros((0, TOP_K)), torch.zeros((0, TOP_K), dtype=torch.int32)))
    assert out.hidden_states.shape == (0, 128) and out.hidden_states.dtype == torch.float16
