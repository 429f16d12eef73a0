"""Which GEMM kernel each breccia layer gets, on this machine and on GPUs described by compute
capability (what ``breccia-sglang inspect --capability`` prints), and the forcing variable."""

from __future__ import annotations

import breccia
import pytest
import torch

from breccia_sglang import names
from breccia_sglang.errors import BrecciaCheckpointError
from breccia_sglang.format import make_recipe
from breccia_sglang.integration.gemm import LinearSpec, Target, choose_kernel, kernel_report

RECIPES = {
    "fp8": make_recipe("fp8"), "fp8-block-128": make_recipe("fp8-block", block_k=128),
    "fp8-block-64": make_recipe("fp8-block", block_k=64), "fp8-block-32": make_recipe("fp8-block", block_k=32),
    "fp8-block-256": make_recipe("fp8-block", block_k=256), "mxfp8": make_recipe("mxfp8"),
    "nvfp4": make_recipe("nvfp4"), "int4": make_recipe("int4", group_size=128),
    "int4-g64-asym": make_recipe("int4", group_size=64, symmetric=False), "int4-g32": make_recipe("int4", group_size=32),
}


def spec_for(recipe_name: str, target: Target, *, k: int = 512, n: int = 256, forced: str | None = None,
             interpreted: bool = False, dtype: torch.dtype = torch.bfloat16) -> LinearSpec:
    st = breccia.cast(torch.zeros(n, k), RECIPES[recipe_name])
    return LinearSpec("model.layers.0.mlp.down_proj", st.recipe, st.layout, k, (n,), dtype,
                      target.device_type, target.capability, has_zero_point=st.zero_point is not None,
                      forced=forced, interpreted=interpreted, simulated=target.simulated)


# recipe -> kernel on (CPU, sm_80, sm_89, sm_90), for a 256 x 512 layer with bf16 activations.
# 1x128 block FP8 takes SGLang's FP8 Marlin below sm_89 (other blocks and MXFP8 our W8A16 kernel
# there), and Hopper's blockwise GEMM ranks above the Triton kernel for 1x128 (measured faster
# on an H200); blocks no W8A8 kernel takes (1x256) get our W8A16 kernel everywhere: this table
# says what each GPU gets today. 4-bit: SGLang's Marlin first; NVFP4 in bf16 takes our Triton kernel
# (FP4 Marlin misreads subnormal scales in bf16).
EXPECTED = {
    "fp8": ("emulated", "sglang-fp8-linear", "sglang-fp8-linear", "sglang-fp8-linear"),  # Marlin on sm_80
    "fp8-block-128": ("emulated", "marlin-fp8", "triton-block-fp8", "blockscale-sm90"),
    "fp8-block-64": ("emulated", "triton-w8a16", "triton-block-fp8", "triton-block-fp8"),
    "fp8-block-32": ("emulated", "triton-w8a16", "triton-block-fp8", "triton-block-fp8"),
    "fp8-block-256": ("emulated", "triton-w8a16", "triton-w8a16", "triton-w8a16"),
    "mxfp8": ("emulated", "triton-w8a16", "triton-block-fp8", "triton-block-fp8"),
    "nvfp4": ("emulated", "triton-w4a16", "triton-w4a16", "triton-w4a16"),
    "int4": ("emulated", "marlin-int4", "marlin-int4", "marlin-int4"),
    "int4-g64-asym": ("emulated", "marlin-int4", "marlin-int4", "marlin-int4"),
    "int4-g32": ("emulated", "marlin-int4", "marlin-int4", "marlin-int4"),
}
TARGETS = (Target("cpu"), Target.gpu(80), Target.gpu(89), Target.gpu(90))


@pytest.mark.parametrize("recipe", list(EXPECTED))
def test_each_recipe_gets_its_kernel_on_each_gpu(recipe):
    assert tuple(choose_kernel(spec_for(recipe, t)).name for t in TARGETS) == EXPECTED[recipe]


def test_every_refusal_names_what_the_kernel_needs():
    reasons = dict(kernel_report(spec_for("fp8-block-256", Target.gpu(90))))
    assert "1x32/64/128 blocks, not 1x256" in reasons[names.GEMM_TRITON_BLOCK_FP8]
    assert "per-tensor FP8 E4M3" in reasons[names.GEMM_SGLANG_FP8]
    assert reasons[names.GEMM_EMULATED] is None
    cpu = dict(kernel_report(spec_for("fp8-block-64", Target("cpu"))))
    assert "TRITON_INTERPRET=1" in cpu[names.GEMM_TRITON_BLOCK_FP8] and names.ENV_GEMM in cpu[names.GEMM_TRITON_BLOCK_FP8]
    assert "sm_89" in dict(kernel_report(spec_for("fp8-block-64", Target.gpu(80))))[names.GEMM_TRITON_BLOCK_FP8]
    # Marlin's tiles: a K of 576 (SmolLM2's hidden size) is no multiple of 128.
    marlin = dict(kernel_report(spec_for("fp8", Target.gpu(86), k=576)))[names.GEMM_SGLANG_FP8]
    assert "N % 64 and K % 128" in marlin and "256 x 576" in marlin
    assert dict(kernel_report(spec_for("fp8", Target.gpu(75))))[names.GEMM_SGLANG_FP8] == \
        "needs a CUDA GPU of sm_80+, this is sm_75"


def test_a_forced_kernel_takes_every_layer_it_can_serve():
    cpu = Target("cpu")
    # The Triton kernel on CPU: only under the interpreter, and only when asked for.
    assert choose_kernel(spec_for("fp8-block-64", cpu, interpreted=True)).name == names.GEMM_EMULATED
    forced = names.GEMM_TRITON_BLOCK_FP8
    assert choose_kernel(spec_for("fp8-block-64", cpu, forced=forced, interpreted=True)).name == forced
    assert choose_kernel(spec_for("fp8-block-64", cpu, forced=forced)).name == names.GEMM_EMULATED
    assert choose_kernel(spec_for("nvfp4", cpu, forced=forced, interpreted=True)).name == names.GEMM_EMULATED
    # The emulated kernel wins on a GPU when asked for (to compare), the reference only then.
    assert choose_kernel(spec_for("fp8", Target.gpu(90), forced=names.GEMM_EMULATED)).name == names.GEMM_EMULATED
    assert choose_kernel(spec_for("fp8", cpu)).name == names.GEMM_EMULATED
    assert choose_kernel(spec_for("fp8", cpu, forced=names.GEMM_W8A8_REFERENCE)).name == names.GEMM_W8A8_REFERENCE
    with pytest.raises(BrecciaCheckpointError, match=f"{names.ENV_GEMM}='fast' names no kernel"):
        choose_kernel(spec_for("fp8", cpu, forced="fast"))


def test_the_spec_reads_the_forcing_variable_and_the_interpreter(monkeypatch):
    from breccia_sglang.format.reader import BrecciaEntry, StoredTensor

    st = breccia.cast(torch.zeros(64, 64), RECIPES["fp8-block-32"])
    entry = BrecciaEntry("w.weight", st.recipe, st.layout, StoredTensor("w.weight.data", "f", "F8_E4M3", (64, 64)),
                         StoredTensor("w.weight.scale", "f", "F32", (64, 2)), None)
    monkeypatch.setenv(names.ENV_GEMM, names.GEMM_TRITON_BLOCK_FP8)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    spec = LinearSpec.for_entry("w", entry, 64, [64], torch.float16, Target("cpu"))
    assert spec.forced == names.GEMM_TRITON_BLOCK_FP8 and spec.interpreted and spec.block == 32
    described = LinearSpec.for_entry("w", entry, 64, [64], torch.float16, Target.gpu(90))
    assert described.simulated and not described.interpreted and described.capability == 90


def test_hoppers_blockwise_gemm_takes_1x128_bf16_layers_on_sm_90_only():
    hopper = Target.gpu(90)
    assert dict(kernel_report(spec_for("fp8-block-128", hopper)))[names.GEMM_BLOCKSCALE_SM90] is None
    forced = spec_for("fp8-block-128", hopper, forced=names.GEMM_BLOCKSCALE_SM90)
    assert choose_kernel(forced).name == names.GEMM_BLOCKSCALE_SM90
    reasons = {recipe_or_gpu: dict(kernel_report(spec))[names.GEMM_BLOCKSCALE_SM90] for recipe_or_gpu, spec in [
        ("1x64", spec_for("fp8-block-64", hopper)), ("mxfp8", spec_for("mxfp8", hopper)),
        ("sm_89", spec_for("fp8-block-128", Target.gpu(89))), ("sm_100", spec_for("fp8-block-128", Target.gpu(100))),
        ("K 640", spec_for("fp8-block-128", hopper, k=640)), ("cpu", spec_for("fp8-block-128", Target("cpu")))]}
    assert reasons["1x64"] == "needs 1x128 blocks, not 1x64"
    assert reasons["mxfp8"] == "needs block FP8 E4M3 with 1x128 scales"
    assert reasons["sm_89"] == "needs a CUDA GPU of sm_90, this is sm_89"
    assert reasons["sm_100"] == "needs a CUDA GPU of sm_90, this is sm_100"
    assert reasons["cpu"].startswith("needs a CUDA GPU (sm_90+)")
    assert reasons["K 640"] is None  # 640 = 5 x 128: the block width, not a power of two, is what counts
    fp16 = spec_for("fp8-block-128", hopper)
    fp16 = LinearSpec(**{**fp16.__dict__, "params_dtype": torch.float16})
    assert "needs bfloat16 activations, not torch.float16" in dict(kernel_report(fp16))[names.GEMM_BLOCKSCALE_SM90]
    narrow = LinearSpec(**{**spec_for("fp8-block-128", hopper).__dict__, "output_partition_sizes": (96,)})
    assert dict(kernel_report(narrow))[names.GEMM_BLOCKSCALE_SM90] == "needs K % 128 and N % 64; this layer is 96 x 512"


def test_4_bit_layers_take_sglangs_marlin_where_it_fits_and_our_triton_kernel_elsewhere():
    hopper, ampere = Target.gpu(90), Target.gpu(80)
    # SGLang's FP4 Marlin serves NVFP4 in fp16, with any N and K (it pads to its tiles).
    assert choose_kernel(spec_for("nvfp4", hopper, dtype=torch.float16, k=80, n=40)).name == names.GEMM_MARLIN_NVFP4
    bf16 = dict(kernel_report(spec_for("nvfp4", hopper)))[names.GEMM_MARLIN_NVFP4]
    assert "float16 activations, not torch.bfloat16" in bf16 and "subnormal" in bf16
    # AWQ-Marlin takes every INT4 recipe on groups 32 / 64 / 128 when N % 64 and K % 128 ...
    for recipe in ("int4", "int4-g64-asym", "int4-g32"):
        assert choose_kernel(spec_for(recipe, ampere)).name == names.GEMM_MARLIN_INT4, recipe
    # ... and SGLang's own rule says why not otherwise: SmolLM2's K = 576, an N of 96.
    odd_k = spec_for("int4-g64-asym", hopper, k=576)
    assert choose_kernel(odd_k).name == names.GEMM_TRITON_W4A16
    assert dict(kernel_report(odd_k))[names.GEMM_MARLIN_INT4] == \
        "SGLang's Marlin needs N % 64 and K % 128; this layer is 256 x 576"
    assert choose_kernel(spec_for("int4-g32", hopper, n=96)).name == names.GEMM_TRITON_W4A16
    fp32 = spec_for("int4", hopper, dtype=torch.float32)
    assert "float16 or bfloat16 activations" in dict(kernel_report(fp32))[names.GEMM_MARLIN_INT4]
    assert choose_kernel(fp32).name == names.GEMM_TRITON_W4A16  # fp32 x takes the exact dot there
    # Below sm_80 neither runs; the emulated kernel does, with the reasons.
    turing = dict(kernel_report(spec_for("int4", Target.gpu(75))))
    assert turing[names.GEMM_MARLIN_INT4] == turing[names.GEMM_TRITON_W4A16] == \
        "needs a CUDA GPU of sm_80+, this is sm_75"
    assert turing[names.GEMM_EMULATED] is None
    # Our kernel's groups: 16 to 128 (a 256-wide group is served emulated, and says so).
    wide = LinearSpec(**{**spec_for("int4", hopper).__dict__, "layout": breccia.PerBlockK(256)})
    assert dict(kernel_report(wide))[names.GEMM_TRITON_W4A16] == "needs groups of 16/32/64/128 along K, not 256"
    assert dict(kernel_report(spec_for("fp8", hopper)))[names.GEMM_TRITON_W4A16] == \
        "needs a 4-bit recipe (NVFP4 or INT4)"


def test_the_triton_w4a16_kernel_runs_on_cpu_only_under_the_interpreter_when_asked_for():
    cpu, forced = Target("cpu"), names.GEMM_TRITON_W4A16
    assert choose_kernel(spec_for("nvfp4", cpu, forced=forced, interpreted=True)).name == forced
    assert choose_kernel(spec_for("int4-g64-asym", cpu, forced=forced, interpreted=True)).name == forced
    assert choose_kernel(spec_for("int4", cpu, interpreted=True)).name == names.GEMM_EMULATED
    assert choose_kernel(spec_for("int4", cpu, forced=forced)).name == names.GEMM_EMULATED
    # Marlin is JIT CUDA: never on CPU, not even when asked for.
    assert choose_kernel(spec_for("int4", cpu, forced=names.GEMM_MARLIN_INT4, interpreted=True)).name == \
        names.GEMM_EMULATED
