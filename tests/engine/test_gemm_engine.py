"""SGLang's Triton W8A8 block kernel serving a breccia model through the real engine on CPU.

A tiny Llama (2 layers; K = 64 and 96, so 1x32 blocks) in fp16, block FP8 in its attention and
MXFP8 in its MLP, runs on the Triton GEMM under TRITON_INTERPRET=1
(``BRECCIA_SGLANG_GEMM=triton-block-fp8``), and the same checkpoint on the fp32 W8A8 reference
kernel: the greedy tokens must agree, and the engine's log must name the kernel each kind of
layer got.
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


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("block-and-mx") / "ckpt"
    quantize_checkpoint(tiny_llama, checkpoint, make_recipe("fp8-block", block_k=32),
                        overrides=(("*.mlp.*", make_recipe("mxfp8")),), progress=False)
    kernels = (names.GEMM_TRITON_BLOCK_FP8, names.GEMM_W8A8_REFERENCE)
    return runs_per_gemm_kernel(checkpoint, kernels, names.GEMM_TRITON_BLOCK_FP8,
                                [{"input_ids": PROMPTS, "sampling_params": GREEDY}], tmp_path_factory)


def test_the_triton_gemm_serves_the_w8a8_references_tokens(runs):
    triton = batch_output_ids(runs[names.GEMM_TRITON_BLOCK_FP8])
    reference = batch_output_ids(runs[names.GEMM_W8A8_REFERENCE])
    assert [len(ids) for ids in triton] == [GREEDY["max_new_tokens"]] * len(PROMPTS)
    assert triton == reference


def test_the_log_names_the_kernel_of_each_kind_of_layer(runs):
    recipes = {"qkv_proj": "block(E4M3,k=32)", "o_proj": "block(E4M3,k=32)", "gate_up_proj": "mxfp8",
               "down_proj": "mxfp8"}
    assert_log_names_each_layers_kernel(runs, recipes)
