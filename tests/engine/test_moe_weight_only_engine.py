"""Our MoE weight-only kernels serving quantized experts through the real engine on CPU.

A tiny Qwen3-MoE (3 layers, 6 experts, top-2) in fp16, served twice (module-scoped params):
- 4-bit experts on ``triton-moe-w4a16``: NVFP4 (layer 0), symmetric INT4 (layer 1) and
  asymmetric INT4 with zero points (layer 2), groups of 32 for INT4;
- FP8 experts on ``triton-moe-w8a16``: per-tensor FP8 (layer 0), 1x32 block FP8 (layer 1) and
  MXFP8 (layer 2), what sm_80 / sm_86 GPUs serve them with.
Under TRITON_INTERPRET=1 with ``BRECCIA_SGLANG_GEMM`` naming the kernel every MoE layer runs it
on the stored codes (routed pairs aligned in torch, as on a GPU without sgl-kernel), and must
serve HF's greedy tokens on breccia's dequantized weights; the log must name each layer's
kernel. (The emulated kernel serves these expert recipes against HF in test_moe_engine.py; a
second engine here for it took ~25 s a param and checked nothing HF's tokens do not.)
"""

from __future__ import annotations

import re

import pytest

from breccia_sglang import names
from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint

from ..helpers import assert_same_greedy_tokens, dequantized_hf_checkpoint, hf_argmax_tokens, runs_per_gemm_kernel

pytestmark = pytest.mark.engine

PROMPT = [1, 5, 17, 42, 99, 7, 3, 250, 64]
NEW_TOKENS = 10
GREEDY = {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}
# kernel -> the experts of layers 0, 1, 2 and the recipe labels the log gives them
SERVED = {
    names.GEMM_TRITON_MOE_W4A16: ((make_recipe("nvfp4"), make_recipe("int4", group_size=32),
                                   make_recipe("int4", group_size=32, symmetric=False)), {"nvfp4", "int4"}),
    names.GEMM_TRITON_MOE_W8A16: ((make_recipe("fp8"), make_recipe("fp8-block", block_k=32), make_recipe("mxfp8")),
                                  {"current", "block", "mxfp8"}),  # breccia's recipe names
}
# The engine runs in fp16 and HF in fp32 on the same dequantized weights: the kernel rounds each
# GEMM's output, 2^-11 of a value, and a random model's logits are flat (top-2 gaps of 5e-5 to
# 0.09 here, in fp32 on breccia's dequantized weights). Steps whose gap is below this may go
# either way, so tokens are compared up to the first one (step 7 of 10 for the 4-bit experts:
# a gap of 5e-5).
NEAR_TIE = 5e-3


@pytest.fixture(scope="module", params=list(SERVED))
def runs(request, tiny_moe, tmp_path_factory):
    ours = request.param
    checkpoint = tmp_path_factory.mktemp(f"moe-{ours}") / "ckpt"
    quantize_checkpoint(tiny_moe, checkpoint, make_recipe("fp8-block", block_k=32), progress=False,
                        overrides=tuple((f"model.layers.{i}.mlp.experts.*", r) for i, r in enumerate(SERVED[ours][0])))
    results = runs_per_gemm_kernel(checkpoint, (ours,), ours, [{"input_ids": PROMPT, "sampling_params": GREEDY}],
                                   tmp_path_factory)
    return ours, checkpoint, results


def test_our_moe_kernel_serves_hfs_tokens_on_the_dequantized_weights(runs, tiny_moe, tmp_path):
    ours, checkpoint, results = runs
    served = results[ours]["results"][0]["output_ids"]
    reference, gaps = hf_argmax_tokens(dequantized_hf_checkpoint(tiny_moe, checkpoint, tmp_path / "hf"), PROMPT,
                                       NEW_TOKENS)
    assert len(served) == NEW_TOKENS
    # Held to HF's tokens up to HF's first near-tie; at it either tied token is right (at step 7,
    # a gap of 5e-5, one host's run served HF's first choice and the emulated kernel its second).
    assert_same_greedy_tokens(served, reference, gaps, NEAR_TIE, at_least=6)


def test_the_log_names_the_kernel_for_every_expert_recipe(runs):
    ours, _, results = runs
    for kernel, result in results.items():
        announced = re.findall(r"breccia-sglang: MoE experts \((.+?), 6 per layer\) run kernel (\S+)",
                               result["stderr"])
        assert {label.split("(")[0] for label, _ in announced} == SERVED[ours][1], announced
        assert len(announced) == 3 and {k for _, k in announced} == {kernel}, announced
