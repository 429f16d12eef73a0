"""SGLang's per-channel W8A8 FP8 linear (``W8A8Fp8LinearMethod``) serving a breccia model with
one scale per row through the real engine on CPU.

A tiny Llama (2 layers; K = 64 and 96) in fp16 with FP8 blocks as wide as each layer's K: the
per-channel FP8 that compressed-tensors' "channel" strategy and FBGEMM convert to. It runs on
``sglang-fp8-channel`` (SGLang's GEMM path on torch's CPU ``_scaled_mm``, asked for by name
under TRITON_INTERPRET=1) and on the fp32 W8A8 reference kernel: the greedy tokens must agree,
and the engine's log must name the kernel each kind of layer got; and at tp=2, where each rank
keeps its rows' scales whole on the split K, with the same tokens.
"""

from __future__ import annotations

import pytest

from breccia_sglang import names
from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint

from ..helpers import assert_log_names_each_layers_kernel, batch_output_ids, runs_per_gemm_kernel
from .test_gemm_engine import GREEDY, PROMPTS

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def checkpoint(tiny_llama, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("per-row") / "ckpt"
    quantize_checkpoint(tiny_llama, checkpoint, make_recipe("fp8-block", block_k=64),
                        overrides=(("*.down_proj.*", make_recipe("fp8-block", block_k=96)),), progress=False)
    return checkpoint


@pytest.fixture(scope="module")
def runs(checkpoint, tmp_path_factory):
    kernels = (names.GEMM_SGLANG_FP8_CHANNEL, names.GEMM_W8A8_REFERENCE)
    return runs_per_gemm_kernel(checkpoint, kernels, names.GEMM_SGLANG_FP8_CHANNEL,
                                [{"input_ids": PROMPTS, "sampling_params": GREEDY}], tmp_path_factory)


def test_sglangs_per_channel_linear_serves_the_w8a8_references_tokens(runs):
    channel = batch_output_ids(runs[names.GEMM_SGLANG_FP8_CHANNEL])
    reference = batch_output_ids(runs[names.GEMM_W8A8_REFERENCE])
    assert [len(ids) for ids in channel] == [GREEDY["max_new_tokens"]] * len(PROMPTS)
    assert channel == reference


def test_the_log_names_the_kernel_of_each_kind_of_layer(runs):
    recipes = {"qkv_proj": "block(E4M3,k=64)", "o_proj": "block(E4M3,k=64)", "gate_up_proj": "block(E4M3,k=64)",
               "down_proj": "block(E4M3,k=96)"}
    assert_log_names_each_layers_kernel(runs, recipes)


def test_under_tensor_parallelism_each_rank_keeps_its_rows_scales_whole(checkpoint, runs, tmp_path_factory):
    # tp=2: o_proj's and down_proj's K split over the ranks (down_proj's 96 padded to 2 x 64 on
    # CPU), their per-row scales loaded whole into SGLang's per-channel parameter on each rank;
    # qkv / gate_up split their rows, scales with them. Same tokens as the tp=1 W8A8 reference.
    kernel = names.GEMM_SGLANG_FP8_CHANNEL
    (result,) = runs_per_gemm_kernel(checkpoint, (kernel,), kernel, [{"input_ids": PROMPTS, "sampling_params": GREEDY}],
                                     tmp_path_factory, env={"SGLANG_CPU_OMP_THREADS_BIND": "0|1"},  # one core a rank
                                     engine={"tp_size": 2}).values()
    assert_log_names_each_layers_kernel({kernel: result}, {"o_proj": "block", "down_proj": "block"})
    assert batch_output_ids(result) == batch_output_ids(runs[names.GEMM_W8A8_REFERENCE])
