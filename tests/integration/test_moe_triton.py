"""SGLang's fused MoE Triton kernels under TRITON_INTERPRET=1, fed breccia experts as our MoE kernels
prepare them (``integration/moe/triton_fused.py``: the stacked parameters after
``process_weights_after_loading``, the quant info the runner gets, our tile configs), against an
fp32 reference per (token, expert) pair.

SGLang's runner cannot run on CPU (its ``moe_align_block_size`` is CUDA only), so the test calls
``invoke_fused_moe_kernel`` itself with the token order ``align_routed_pairs`` builds as that op
documents it.
Routing is uneven on purpose: expert 3 gets no token, expert 0 most. Activations are fp16 (bf16
``tl.dot`` is wrong in the interpreter); W8A8 activations are quantized in torch beforehand
(the interpreter's fp32 -> fp8 cast drops its rounding carry), as SGLang's pre-quantized path
takes them.
"""

from __future__ import annotations

import breccia
import pytest
import torch

from breccia_sglang.format import make_recipe
from breccia_sglang.format.recipes import packs_two_per_byte
from breccia_sglang.integration.moe import MoESpec
from breccia_sglang.integration.moe.align import align_routed_pairs
from breccia_sglang.integration.moe.triton_fused import (MAX_TILE_K, TritonFusedMoEKernel, TritonMoEWna16Kernel,
                                                         moe_tile_config)
from breccia_sglang.weights import quantize_activations_fp8
from breccia_sglang.weights.packing import pack_low_first

E, TOP_K = 4, 2


def routing(m: int, gen: torch.Generator) -> torch.Tensor:
    """(M, top_k) expert ids: two distinct experts per token from 0..2 (expert 3 never routed),
    expert 0 about half the picks."""
    first = torch.where(torch.rand(m, generator=gen) < 0.6, 0, torch.randint(1, 3, (m,), generator=gen))
    second = (first + torch.randint(1, 3, (m,), generator=gen)) % 3
    return torch.stack([first, second], dim=1).to(torch.int32)


def prepared_layer(kernel, recipe, hidden: int, inter: int, gen: torch.Generator):
    """Breccia experts loaded into the kernel's parameters as FusedMoE's loader stacks them (w13:
    each expert's gate rows, then its up rows, each projection cast on its own) and prepared by
    the kernel; also each expert's dequantized weight (fp32), per stacked weight."""
    shapes = {"w13": ((inter, hidden), (inter, hidden)), "w2": ((hidden, inter),)}
    casts = {w: [[breccia.cast(torch.randn(*shape, generator=gen) * 0.05, recipe) for shape in shards]
                 for _ in range(E)] for w, shards in shapes.items()}
    st = casts["w13"][0][0]
    spec = MoESpec("model.layers.0.mlp.experts", st.recipe, st.layout, hidden, (inter, inter), torch.float16, "cuda",
                   90, scale_dtype=st.scale.dtype, has_zero_point=st.zero_point is not None, simulated=True,
                   num_experts=E)
    assert kernel.why_not(spec) is None, kernel.why_not(spec)
    layer, prepared = torch.nn.Module(), kernel()
    prepared.create_weights(layer, spec, weight_loader=None)
    for w, experts in casts.items():
        param = getattr(layer, f"{w}_weight")
        for e, shards in enumerate(experts):
            codes = torch.cat([t.data for t in shards])
            param.data[e].copy_(pack_low_first(codes) if packs_two_per_byte(recipe) else codes.view(param.dtype))
            per_tensor = shards[0].scale.dim() == 0
            scale = torch.stack([t.scale for t in shards]) if per_tensor else torch.cat([t.scale for t in shards])
            getattr(layer, f"{w}_weight_scale").data[e].copy_(scale.reshape(getattr(layer, f"{w}_weight_scale")[e].shape))
            if shards[0].zero_point is not None:
                getattr(layer, f"{w}_weight_zero_point").data[e].copy_(torch.cat([t.zero_point for t in shards]))
    prepared.process_weights_after_loading(layer)
    dequantized = {w: [torch.cat([breccia.dequantize(t) for t in shards]) for shards in experts]
                   for w, experts in casts.items()}
    return prepared, layer, dequantized, casts


def run_kernel(prepared, layer, w: str, x: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """One stacked weight's GEMM for every (token, k): (M, top_k, N) fp16."""
    import triton.language as tl
    from sglang.kernels.ops.moe.fused_moe_triton_kernels import invoke_fused_moe_kernel

    info = prepared.quant_info(layer)
    weight, scale = getattr(info, f"{w}_weight"), getattr(info, f"{w}_scale")
    config = moe_tile_config(topk_ids.numel(), prepared.block, interpreted=True, max_tile_k=MAX_TILE_K[prepared.kind])
    sorted_ids, expert_ids, padded = align_routed_pairs(topk_ids, config["BLOCK_SIZE_M"], E)
    a, a_scale = x, None
    if info.use_fp8_w8a8:
        a, a_scale = quantize_activations_fp8(x, info.block_shape[1])
    out = torch.zeros(x.shape[0], TOP_K, weight.shape[1], dtype=torch.float16)
    invoke_fused_moe_kernel(a, weight, None, out, a_scale, scale, getattr(info, f"{w}_zp"),
                            torch.ones(topk_ids.shape, dtype=torch.float32), topk_ids, sorted_ids, expert_ids, padded,
                            False, TOP_K, config, tl.float16, use_fp8_w8a8=info.use_fp8_w8a8, use_int8_w8a8=False,
                            use_int8_w8a16=False, use_int4_w4a16=info.use_int4_w4a16,
                            per_channel_quant=info.per_channel_quant, block_shape=info.block_shape)
    return out


def reference(weights, x, topk_ids, w8a8_group: int | None):
    """(M, top_k, N) fp32: each routed pair through its expert's dequantized weight (W8A8: the
    activations through their FP8 codes and scales first)."""
    if w8a8_group:
        codes, scale = quantize_activations_fp8(x, w8a8_group)
        x = (codes.float().view(x.shape[0], -1, w8a8_group) * scale[..., None]).view(x.shape)
    return torch.stack([torch.stack([x[t].float() @ weights[int(e)].T for e in row]) for t, row in enumerate(topk_ids)])


CASES = [  # (kernel, recipe, hidden, expert intermediate): K = 2B and 3B for the blocks / groups
    (TritonFusedMoEKernel, make_recipe("fp8-block", block_k=64), 128, 192),
    (TritonFusedMoEKernel, make_recipe("fp8-block", block_k=128), 256, 128),
    (TritonMoEWna16Kernel, make_recipe("int4", group_size=32), 64, 96),
    (TritonMoEWna16Kernel, make_recipe("int4", group_size=32, symmetric=False), 96, 64),
    (TritonMoEWna16Kernel, breccia.INT4Scaling(group_size=32, symmetric=True, signed=False), 64, 96),
]


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("kernel,recipe,hidden,inter", CASES, ids=lambda v: getattr(v, "name", None))
def test_sglangs_fused_moe_kernels_on_breccia_experts_match_fp32(kernel, recipe, hidden, inter, m):
    gen = torch.Generator().manual_seed(m)
    prepared, layer, experts, _ = prepared_layer(kernel, recipe, hidden, inter, gen)
    topk_ids = routing(m, gen)
    w8a8 = recipe.name != "int4"
    for w, k in (("w13", hidden), ("w2", inter)):
        x = torch.randn(m, k, generator=gen).to(torch.float16)
        out = run_kernel(prepared, layer, w, x, topk_ids).float()
        ref = reference(experts[w], x, topk_ids, recipe.block_k if w8a8 else None)
        weights = [weight.abs() for weight in experts[w]]
        magnitude = torch.stack([torch.stack([x[t].float().abs() @ weights[int(e)].T for e in row])
                                 for t, row in enumerate(topk_ids)])
        # W8A8: the same fp8 products in fp32, in another order, then one fp16 rounding of the
        # output (2^-11 of |out| <= magnitude). W4A16: also each dequantized weight rounded to
        # fp16 once (2^-11), so twice that. Plus fp32 summation, < 1e-5 of the magnitude.
        tolerance = (2.0**-11 if w8a8 else 2 * 2.0**-11) + 1e-5
        assert (out - ref).abs().max().item() <= (tolerance * magnitude).max().item(), (w, (out - ref).abs().max())
        assert ((out - ref).abs() <= tolerance * magnitude + 1e-6).all(), w


def test_a_tile_config_with_a_k_tile_that_straddles_scale_blocks_is_never_chosen():
    for routed in (1, 64, 65, 5000):
        for block in (16, 32, 64, 128):
            for kind, max_k in MAX_TILE_K.items():
                config = moe_tile_config(routed, block, interpreted=False, max_tile_k=max_k)
                assert block % config["BLOCK_SIZE_K"] == 0 and config["BLOCK_SIZE_N"] >= 16
                assert config["BLOCK_SIZE_K"] == min(block, max_k), (kind, config)
    assert moe_tile_config(7, 16, interpreted=True)["BLOCK_SIZE_K"] == 16


def test_int4_zero_points_pack_two_rows_per_byte_and_signed_codes_flip_to_unsigned():
    gen = torch.Generator().manual_seed(0)
    asym, layer, _, casts = prepared_layer(TritonMoEWna16Kernel, make_recipe("int4", group_size=32, symmetric=False),
                                           64, 96, gen)
    zp = layer.w13_weight_zero_point
    assert zp.dtype == torch.uint8 and zp.shape == (E, 96, 2)  # (E, 2I / 2, H / G)
    z = torch.cat([t.zero_point for t in casts["w13"][2]])  # expert 2's gate rows, then its up rows
    assert torch.equal((zp[2] & 0x0F).float(), z[0::2]) and torch.equal((zp[2] >> 4).float(), z[1::2])
    signed, layer, _, casts = prepared_layer(TritonMoEWna16Kernel, make_recipe("int4", group_size=32), 64, 96, gen)
    assert signed.quant_info(layer).w13_zp is None
    codes = casts["w2"][1][0].data  # two's complement nibbles; the kernel reads u - 8
    assert torch.equal(layer.w2_weight[1], pack_low_first(codes) ^ 0x88)


def test_the_routed_pairs_are_grouped_by_expert_in_whole_blocks_without_a_host_sync(monkeypatch):
    topk_ids = torch.tensor([[0, 2], [2, 0], [0, 1], [2, 0]], dtype=torch.int32)  # expert 3: none
    with monkeypatch.context() as banned:  # a CUDA graph captures it: no tensor value read on the host
        for read in ("__bool__", "__int__", "__index__", "item", "tolist"):
            banned.setattr(torch.Tensor, read, lambda *a: pytest.fail("a tensor value read on the host"))
        sorted_ids, expert_ids, padded = align_routed_pairs(topk_ids, 4, E)
    pad = topk_ids.numel()
    # The real blocks, then padding up to SGLang's worst case (8 pairs + (4 experts + the group
    # of other ranks' pairs) x 3 = 23 rows, in whole blocks: 24)
    assert sorted_ids.tolist() == [0, 3, 4, 7, 5, pad, pad, pad, 1, 2, 6, pad] + [pad] * 12
    assert expert_ids.tolist() == [0, 1, 2, -1, -1, -1] and padded.tolist() == [12]
    sorted_ids, expert_ids, padded = align_routed_pairs(torch.zeros((0, 2), dtype=torch.int32), 4, E)
    assert padded.tolist() == [0] and set(expert_ids.tolist()) == {-1}


def test_pairs_of_other_ranks_experts_come_first_in_blocks_tagged_minus_one():
    # Expert parallelism: -1 marks a pair whose expert is on another rank (SGLang's dispatcher).
    # SGLang's align op groups them first, in blocks tagged -1 inside the routed count, so the
    # kernels write their rows as zeros; pairs 1, 2, 3 here.
    topk_ids = torch.tensor([[0, -1], [-1, -1], [2, 0]], dtype=torch.int32)
    sorted_ids, expert_ids, padded = align_routed_pairs(topk_ids, 4, E)
    pad = topk_ids.numel()
    assert sorted_ids.tolist()[:12] == [1, 2, 3, pad, 0, 5, pad, pad, 4, pad, pad, pad]
    assert expert_ids.tolist()[:3] == [-1, 0, 2] and padded.tolist() == [12]
    # And on random routings, the same blocks as the contract written as a loop.
    from ..kernels.routed import blocks_by_loop

    gen = torch.Generator().manual_seed(12)
    for tokens, block_m in ((1, 16), (9, 4), (40, 16)):
        ids = torch.randint(-1, E, (tokens, TOP_K), generator=gen, dtype=torch.int32)
        loop = blocks_by_loop(ids, block_m, E)
        assert [t.tolist() for t in align_routed_pairs(ids, block_m, E)] == \
            [loop.sorted_pairs.tolist(), loop.block_experts.tolist(), loop.padded_count.tolist()]


def test_the_emulated_moe_without_host_syncs_equals_sglangs_native_loop(monkeypatch):
    # On CUDA the emulated MoE runs every expert on every token (no host sync, so CUDA graphs can
    # capture it); on CPU it runs SGLang's moe_forward_native. Both must be the same layer, and
    # the CUDA one must read no tensor value on the host.
    from sglang.srt.layers.moe.fused_moe_native import moe_forward_native
    from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig
    from sglang.srt.layers.moe.topk import StandardTopKOutputPacked

    from breccia_sglang.integration.moe.emulated import EmulatedMoEKernel, _ExpertLayer, every_expert_moe

    gen = torch.Generator().manual_seed(3)
    for recipe in (make_recipe("fp8"), make_recipe("int4", group_size=32, symmetric=False), make_recipe("nvfp4")):
        prepared, layer, _, _ = prepared_layer(EmulatedMoEKernel, recipe, 64, 96, gen)
        layer.num_experts = E
        x = torch.randn(7, 64, generator=gen)
        topk_ids = routing(7, gen)
        topk_weights = torch.rand(7, TOP_K, generator=gen)
        experts = _ExpertLayer(layer, prepared.spec, x.dtype, prepared.nan_free, prepared.small_scales)
        config = MoeRunnerConfig(activation="silu")
        native = moe_forward_native(experts, x, (topk_weights, topk_ids, None), config)
        with monkeypatch.context() as banned:
            for read in ("__bool__", "item", "tolist"):
                banned.setattr(torch.Tensor, read, lambda *a: pytest.fail("a tensor value read on the host"))
            dense = every_expert_moe(experts, x, (topk_weights, topk_ids, None), config)
        # fp32 throughout: the same products summed in another order (and unrouted experts add 0).
        assert torch.allclose(dense, native, rtol=1e-5, atol=1e-6), (recipe.name, (dense - native).abs().max())
        # SGLang's fused gate may hand the top-k with FlashInfer's packed ids as a fourth field.
        packed = StandardTopKOutputPacked(topk_weights, topk_ids, None, torch.zeros_like(topk_ids))
        assert torch.equal(every_expert_moe(experts, x, packed, config), dense)


def test_the_emulated_moe_gives_the_pairs_of_other_ranks_experts_nothing():
    # Expert parallelism: each rank sums its own experts' pairs, FusedMoE's all-reduce the ranks.
    # On CPU the pairs marked -1 go to zero-width experts inside SGLang's native loop; on CUDA
    # the every-expert path never matches -1. Both must equal the layer without those pairs.
    from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    from breccia_sglang.integration.moe.emulated import EmulatedMoEKernel, _ExpertLayer, every_expert_moe

    from ..kernels.routed import with_remote_pairs
    from .test_moe_w4a16 import layer_in_fp32

    gen = torch.Generator().manual_seed(13)
    prepared, layer, experts, _ = prepared_layer(EmulatedMoEKernel, make_recipe("fp8-block", block_k=32), 64, 96, gen)
    config = MoeRunnerConfig(activation="silu")
    prepared.create_moe_runner(layer, config)
    x = torch.randn(7, 64, generator=gen)
    topk_ids = with_remote_pairs(routing(7, gen))  # token 0 has both its experts elsewhere
    topk_weights = torch.rand(7, TOP_K, generator=gen)
    served = prepared.apply(layer, StandardDispatchOutput(x, None, StandardTopKOutput(topk_weights, topk_ids, None)))
    expected, _ = layer_in_fp32(experts, x, topk_weights * (topk_ids >= 0), topk_ids.clamp_min(0),
                                torch.nn.functional.silu)
    # fp32 throughout, summed in another order; token 0 gets exactly nothing.
    assert torch.allclose(served.hidden_states, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(served.hidden_states[0], torch.zeros(64))
    dense = every_expert_moe(_ExpertLayer(layer, prepared.spec, x.dtype, prepared.nan_free, prepared.small_scales),
                             x, (topk_weights, topk_ids, None), config)
    assert torch.allclose(dense, expected, rtol=1e-5, atol=1e-6)
