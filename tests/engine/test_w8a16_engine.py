"""Our Triton W8A16 GEMM serving an FP8 breccia model through the real engine on CPU.

A tiny Llama (2 layers; K = 64 and 96) in fp16 holds every FP8 recipe the kernel reads:
per-tensor FP8 in q/k/v (one scale per merged shard, repeated over its rows once after
loading), 1x32 block FP8 in o_proj and down_proj, and MXFP8 (E8M0 scales) in gate/up. Under
TRITON_INTERPRET=1 with ``BRECCIA_SGLANG_GEMM=triton-w8a16`` every layer runs the kernel on
the FP8 codes (K split across programs at decode); the same checkpoint on the emulated kernel
(the weight dequantized in torch, then a matmul) must give the same greedy tokens, and the log
must name each layer's kernel. The same checkpoint on the W8A8 Triton block kernel with every
batch routed to W8A16 (``BRECCIA_SGLANG_W8A16_UP_TO_M``) gives those tokens too, and so does
the W8A16 kernel with its prefill batches on the weight dequantized in one pass
(``BRECCIA_SGLANG_DEQUANTIZE_FROM_M``).
"""

from __future__ import annotations

import pytest

from breccia_sglang import names
from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint

from ..helpers import assert_log_names_each_layers_kernel, batch_output_ids, runs_per_gemm_kernel

pytestmark = pytest.mark.engine

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
PROMPTS = [list(range(3, 40)), list(range(50, 57))]  # a 37- and a 7-token prompt, one batch
KERNELS = (names.GEMM_TRITON_W8A16, names.GEMM_EMULATED)


@pytest.fixture(scope="module")
def checkpoint(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("fp8-recipes") / "ckpt"
    quantize_checkpoint(tiny_llama, path, make_recipe("fp8-block", block_k=32), overrides=(
        ("*.self_attn.[qkv]_proj.*", make_recipe("fp8")), ("*.mlp.gate_proj.*", make_recipe("mxfp8")),
        ("*.mlp.up_proj.*", make_recipe("mxfp8")),
    ), progress=False)
    return path


@pytest.fixture(scope="module")
def runs(checkpoint, tmp_path_factory):
    return runs_per_gemm_kernel(checkpoint, KERNELS, names.GEMM_TRITON_W8A16,
                                [{"input_ids": PROMPTS, "sampling_params": GREEDY}], tmp_path_factory)


@pytest.fixture(scope="module")
def routed(checkpoint, tmp_path_factory):
    """The W8A8 Triton block kernel asked for, with every batch routed to W8A16 (a bound above any
    batch): the per-tensor q/k/v layers, which it does not serve, stay emulated."""
    return runs_per_gemm_kernel(checkpoint, (names.GEMM_TRITON_BLOCK_FP8,), names.GEMM_TRITON_BLOCK_FP8,
                                [{"input_ids": PROMPTS, "sampling_params": GREEDY}], tmp_path_factory,
                                env={names.ENV_W8A16_UP_TO_M: "100000"})


@pytest.fixture(scope="module")
def dequantized_prefill(checkpoint, tmp_path_factory):
    """triton-w8a16 with batches of 8 tokens or more on the dequantized weight: the 44-token
    prefill batch takes that route, the 2-token decode batches stay on the kernel."""
    return runs_per_gemm_kernel(checkpoint, (names.GEMM_TRITON_W8A16,), names.GEMM_TRITON_W8A16,
                                [{"input_ids": PROMPTS, "sampling_params": GREEDY}], tmp_path_factory,
                                env={names.ENV_DEQUANTIZE_FROM_M: "8"})


def test_the_triton_w8a16_gemm_serves_the_emulated_kernels_tokens(runs):
    triton = batch_output_ids(runs[names.GEMM_TRITON_W8A16])
    emulated = batch_output_ids(runs[names.GEMM_EMULATED])
    assert [len(ids) for ids in triton] == [GREEDY["max_new_tokens"]] * len(PROMPTS)
    assert triton == emulated


def test_the_log_names_each_fp8_layers_kernel_and_recipe(runs):
    recipes = {"qkv_proj": "current", "o_proj": "block(E4M3,k=32)", "gate_up_proj": "mxfp8",
               "down_proj": "block(E4M3,k=32)"}
    assert_log_names_each_layers_kernel(runs, recipes)


def test_w8a8_layers_routed_to_w8a16_serve_the_same_tokens_and_say_so(runs, routed):
    result = routed[names.GEMM_TRITON_BLOCK_FP8]
    emulated = batch_output_ids(runs[names.GEMM_EMULATED])
    assert batch_output_ids(result) == emulated
    assert "triton-block-fp8 runs batches of up to 100000 tokens on triton-w8a16" in result["stderr"]


def test_prefill_on_the_dequantized_weight_serves_the_same_tokens_and_says_so(runs, dequantized_prefill):
    result = dequantized_prefill[names.GEMM_TRITON_W8A16]
    emulated = batch_output_ids(runs[names.GEMM_EMULATED])
    assert batch_output_ids(result) == emulated
    for groups in ("per-tensor", "32"):  # q/k/v; o, down (1x32) and gate/up (MXFP8)
        assert (f"triton-w8a16 runs batches of 8 tokens or more on its weight dequantized in one pass and a "
                f"dense GEMM (scale groups: {groups})") in result["stderr"]
