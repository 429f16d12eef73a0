"""Our Triton W4A16 GEMM serving a 4-bit breccia model through the real engine on CPU.

A tiny Llama (2 layers; K = 64 and 96) in fp16 holds every 4-bit code kind the kernel reads:
symmetric signed INT4 in q/k/v, asymmetric INT4 (zero points) in o_proj, NVFP4 (E2M1 codes,
E4M3 scales) in gate/up and symmetric unsigned INT4 in down_proj, all with groups of 32 or 16.
Under TRITON_INTERPRET=1 with ``BRECCIA_SGLANG_GEMM=triton-w4a16`` every layer runs the kernel
on the packed codes; the same checkpoint on the emulated kernel (the weight dequantized in
torch, then a matmul) must give the same greedy tokens, and the log must name each layer's
kernel. With ``BRECCIA_SGLANG_DEQUANTIZE_FROM_M=8`` (the emulated kernel has no routes) the
44-token prefill batch takes the prefill route, the weight dequantized in one pass, and the
2-token decode batches the kernel: both are in those tokens.
"""

from __future__ import annotations

import re

import breccia
import pytest

from breccia_sglang import names
from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint

from ..helpers import assert_log_names_each_layers_kernel, batch_output_ids, runs_per_gemm_kernel

pytestmark = pytest.mark.engine

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
PROMPTS = [list(range(3, 40)), list(range(50, 57))]  # a 37- and a 7-token prompt, one batch
KERNELS = (names.GEMM_TRITON_W4A16, names.GEMM_EMULATED)
# layer kind -> the recipe label its log line starts with
RECIPES = {"qkv_proj": "int4(g=32,sym)", "o_proj": "int4(g=32,asym)", "gate_up_proj": "nvfp4",
           "down_proj": "int4(g=32,sym,unsigned)"}


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("four-bit") / "ckpt"
    quantize_checkpoint(tiny_llama, checkpoint, make_recipe("int4", group_size=32), overrides=(
        ("*.self_attn.o_proj.*", make_recipe("int4", group_size=32, symmetric=False)),
        ("*.mlp.gate_proj.*", make_recipe("nvfp4")), ("*.mlp.up_proj.*", make_recipe("nvfp4")),
        ("*.mlp.down_proj.*", breccia.INT4Scaling(group_size=32, symmetric=True, signed=False)),
    ), progress=False)
    return runs_per_gemm_kernel(checkpoint, KERNELS, names.GEMM_TRITON_W4A16,
                                [{"input_ids": PROMPTS, "sampling_params": GREEDY}], tmp_path_factory,
                                env={names.ENV_DEQUANTIZE_FROM_M: "8"})


def test_the_triton_w4a16_gemm_serves_the_emulated_kernels_tokens(runs):
    triton = batch_output_ids(runs[names.GEMM_TRITON_W4A16])
    emulated = batch_output_ids(runs[names.GEMM_EMULATED])
    assert [len(ids) for ids in triton] == [GREEDY["max_new_tokens"]] * len(PROMPTS)
    assert triton == emulated


def test_the_log_names_each_4_bit_layers_kernel_and_recipe(runs):
    assert_log_names_each_layers_kernel(runs, RECIPES)


def test_the_log_says_prefill_batches_take_the_dequantized_weight(runs):
    stderr = runs[names.GEMM_TRITON_W4A16]["stderr"]
    for key in ("int4", "nvfp4"):
        assert (f"triton-w4a16 runs batches of 8 tokens or more on its weight dequantized in one pass and a dense "
                f"GEMM ({key} weights)") in stderr
    assert "dequantized in one pass" not in runs[names.GEMM_EMULATED]["stderr"]


def test_the_quantized_layers_stay_packed_two_codes_per_byte(runs):
    # The resident-bytes line: weights are N * K / 2 bytes under either kernel (read in place).
    for result in runs.values():
        line = re.search(r"quantized layers \(linear and MoE\) hold .* \[bytes (\d+) / (\d+)\]", result["stderr"])
        assert line, result["stderr"][-2000:]
        held, bf16 = map(int, line.groups())
        assert held < 0.35 * bf16  # 4 bits of 16 plus scales: 0.25x + ~0.06x at groups of 16-32
