"""Which kernel a breccia MoE layer gets, here and on described GPUs, and ``inspect``'s MoE rows."""

from __future__ import annotations

import subprocess
import sys

import breccia
import pytest
import torch

from breccia_sglang import names
from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint
from breccia_sglang.integration.gemm import Target
from breccia_sglang.integration.inspect_report import inspect_checkpoint
from breccia_sglang.integration.moe import MoESpec, choose_moe_kernel, moe_kernel_report

from ..helpers import per_row_experts

RECIPES = {"fp8": make_recipe("fp8"), "fp8-block-128": make_recipe("fp8-block", block_k=128),
           "fp8-block-64": make_recipe("fp8-block", block_k=64), "fp8-block-16": make_recipe("fp8-block", block_k=16),
           "mxfp8": make_recipe("mxfp8"),
           "nvfp4": make_recipe("nvfp4"), "int4": make_recipe("int4", group_size=128),
           "int4-asym": make_recipe("int4", group_size=64, symmetric=False)}
# recipe -> kernel on (CPU, sm_80, sm_89, sm_90): 4-bit experts take our MoE W4A16 kernel (SGLang's
# W4A16 MoE kernel measured 0.05-0.1x BF16 on an H200; its NVFP4 one needs sm_100 and a calibrated
# activation scale); FP8 takes SGLang's W8A8 kernel where FP8 tensor cores are, our MoE W8A16
# kernel before them (sm_80 / sm_86) and for blocks no W8A8 kernel takes (1x16).
EXPECTED = {
    "fp8": ("emulated", "triton-moe-w8a16", "triton-fused-moe", "triton-fused-moe"),
    "fp8-block-128": ("emulated", "triton-moe-w8a16", "triton-fused-moe", "triton-fused-moe"),
    "fp8-block-64": ("emulated", "triton-moe-w8a16", "triton-fused-moe", "triton-fused-moe"),
    "fp8-block-16": ("emulated", "triton-moe-w8a16", "triton-moe-w8a16", "triton-moe-w8a16"),
    "mxfp8": ("emulated", "triton-moe-w8a16", "triton-fused-moe", "triton-fused-moe"),
    "nvfp4": ("emulated", "triton-moe-w4a16", "triton-moe-w4a16", "triton-moe-w4a16"),
    "int4": ("emulated", "triton-moe-w4a16", "triton-moe-w4a16", "triton-moe-w4a16"),
    "int4-asym": ("emulated", "triton-moe-w4a16", "triton-moe-w4a16", "triton-moe-w4a16"),
}
TARGETS = (Target("cpu"), Target.gpu(80), Target.gpu(89), Target.gpu(90))


def moe_spec(recipe_name, target, *, hidden=2048, inter=768, dtype=torch.bfloat16) -> MoESpec:
    st = breccia.cast(torch.zeros(2, 256), RECIPES[recipe_name])
    return MoESpec("model.layers.0.mlp.experts", st.recipe, st.layout, hidden, (inter, inter), dtype,
                   target.device_type, target.capability, has_zero_point=st.zero_point is not None,
                   simulated=target.simulated, num_experts=128)


@pytest.mark.parametrize("recipe", list(EXPECTED))
def test_each_expert_recipe_gets_its_kernel_on_each_gpu(recipe):
    # Qwen3-30B-A3B's experts: hidden 2048, expert intermediate 768 (= 6 x 128).
    assert tuple(choose_moe_kernel(moe_spec(recipe, t)).name for t in TARGETS) == EXPECTED[recipe]


def test_every_moe_refusal_says_why():
    hopper = Target.gpu(90)
    reasons = dict(moe_kernel_report(moe_spec("fp8-block-128", hopper, inter=704)))  # 704 = 5.5 x 128
    assert reasons[names.GEMM_TRITON_FUSED_MOE] == "w2: K=704 splits a 128-wide scale block"
    assert reasons[names.GEMM_EMULATED] == "w2: K=704 splits a 128-wide scale block"  # no kernel can: refused
    assert dict(moe_kernel_report(moe_spec("fp8", Target.gpu(80))))[names.GEMM_TRITON_FUSED_MOE] == \
        "needs a CUDA GPU of sm_89+, this is sm_80"
    assert dict(moe_kernel_report(moe_spec("nvfp4", hopper)))[names.GEMM_TRITON_MOE_WNA16] == "needs INT4 experts"
    assert "float16 or bfloat16" in dict(moe_kernel_report(moe_spec("int4", hopper, dtype=torch.float32)))[
        names.GEMM_TRITON_MOE_WNA16]
    cpu = dict(moe_kernel_report(moe_spec("int4", Target("cpu"))))
    assert cpu[names.GEMM_TRITON_MOE_WNA16] == "needs a CUDA GPU (sm_80+)"  # SGLang's runner is CUDA only
    forced = MoESpec(**{**vars(moe_spec("int4", hopper)), "forced": names.GEMM_EMULATED})
    assert choose_moe_kernel(forced).name == names.GEMM_EMULATED
    forced = MoESpec(**{**vars(moe_spec("int4", hopper)), "forced": names.GEMM_TRITON_MOE_WNA16})
    assert choose_moe_kernel(forced).name == names.GEMM_TRITON_MOE_WNA16  # SGLang's, for comparison


def test_our_moe_w4a16_refusals_name_what_it_needs():
    hopper, ours = Target.gpu(90), names.GEMM_TRITON_MOE_W4A16
    assert dict(moe_kernel_report(moe_spec("fp8", hopper)))[ours] == "needs 4-bit experts (NVFP4 or INT4)"
    assert dict(moe_kernel_report(moe_spec("int4", hopper, inter=704)))[ours] == \
        "w2: K=704 splits a 128-wide scale group"
    assert dict(moe_kernel_report(moe_spec("nvfp4", Target.gpu(75))))[ours] == "needs a CUDA GPU of sm_80+, this is sm_75"
    assert dict(moe_kernel_report(moe_spec("nvfp4", Target("cpu"))))[ours] == \
        f"needs a CUDA GPU (sm_80+); on CPU only under TRITON_INTERPRET=1 with {names.ENV_GEMM}={ours}"
    cpu_forced = MoESpec(**{**vars(moe_spec("nvfp4", Target("cpu"))), "forced": ours, "interpreted": True})
    assert choose_moe_kernel(cpu_forced).name == ours  # how CI serves it through the engine


def test_our_moe_w8a16_serves_fp8_experts_sglangs_kernel_cannot_and_says_why_not_others():
    hopper, ampere, ours = Target.gpu(90), Target.gpu(80), names.GEMM_TRITON_MOE_W8A16
    assert dict(moe_kernel_report(moe_spec("fp8-block-16", hopper)))[names.GEMM_TRITON_FUSED_MOE] == \
        "needs 1x32/64/128 blocks, not 1x16"
    assert dict(moe_kernel_report(moe_spec("nvfp4", ampere)))[ours] == \
        "needs FP8 E4M3 weights (per-tensor, 1xB block or MXFP8)"
    assert dict(moe_kernel_report(moe_spec("fp8-block-128", ampere, inter=704)))[ours] == \
        "w2: K=704 splits a 128-wide scale block"
    assert dict(moe_kernel_report(moe_spec("fp8", Target.gpu(75))))[ours] == "needs a CUDA GPU of sm_80+, this is sm_75"
    cpu_forced = MoESpec(**{**vars(moe_spec("mxfp8", Target("cpu"))), "forced": ours, "interpreted": True})
    assert choose_moe_kernel(cpu_forced).name == ours  # how CI serves it through the engine


def test_inspect_lists_each_moe_layer_once_with_its_kernel_here_and_on_a_gpu(tiny_moe, tmp_path):
    checkpoint = tmp_path / "ckpt"
    quantize_checkpoint(tiny_moe, checkpoint, make_recipe("int4", group_size=32),
                        overrides=(("model.layers.1.mlp.experts.*", make_recipe("fp8-block", block_k=32)),),
                        progress=False)
    for capability, kernels in ((None, ("emulated", "emulated")), (90, ("triton-moe-w4a16", "triton-fused-moe"))):
        report = inspect_checkpoint(checkpoint, capability)
        rows = {line.split()[0]: line.split() for line in report.splitlines() if "(MoE)" in line}
        assert set(rows) == {f"model.layers.{i}.mlp.experts" for i in range(3)}, report
        assert rows["model.layers.0.mlp.experts"][2].startswith("int4(g=32,sym)")
        assert rows["model.layers.1.mlp.experts"][2].startswith("block(E4M3,k=32)")
        assert rows["model.layers.0.mlp.experts"][3] == "6x(192x64+64x96)"
        assert (rows["model.layers.0.mlp.experts"][-1], rows["model.layers.1.mlp.experts"][-1]) == kernels
        assert ".experts.0.gate_proj" not in report  # one row per MoE layer, not per expert
        assert report.rstrip().endswith("OK")


def test_inspect_shows_each_layer_as_a_rank_holds_it_and_every_shard_no_kernel_serves(tiny_moe, tmp_path):
    # The tiny MoE's experts (6, intermediate 96) in 32-wide INT4 groups, attention in 64-wide
    # FP8 blocks. At --tp 2 a rank holds 48 expert columns: that splits a group, so the server
    # would stop after loading (test_moe_engine's refused-shard test); with --ep-size 2 a rank
    # holds 3 whole experts and serves them (its expert-parallel test). o_proj's 64-wide blocks
    # are its whole K, one scale per row, which a rank's 32 columns keep whole. Every refusal is
    # listed, and the command exits 2.
    checkpoint = tmp_path / "ckpt"
    quantize_checkpoint(tiny_moe, checkpoint, make_recipe("fp8-block", block_k=64),
                        overrides=(("model.layers.*.mlp.experts.*", make_recipe("int4", group_size=32)),),
                        progress=False)

    def rows(report):
        return {line.split()[0]: line for line in report.splitlines() if line.startswith("model.")}

    whole = rows(inspect_checkpoint(checkpoint, 90))
    assert all("refused" not in row for row in whole.values())
    tp = inspect_checkpoint(checkpoint, 90, tp=2)
    assert "a rank of --tp 2" in tp.splitlines()[0]
    assert tp.rstrip().endswith("3 layer(s) refused (no kernel for this shard, shown above)")  # the 3 MoE layers
    for i in range(3):
        assert rows(tp)[f"model.layers.{i}.mlp.experts"].endswith("refused: w2: K=48 splits a 32-wide scale block")
        assert "6x(96x64+64x48)" in rows(tp)[f"model.layers.{i}.mlp.experts"]
        assert rows(tp)[f"model.layers.{i}.self_attn.o_proj.weight"].endswith("sglang-fp8-channel")  # per row
        assert "refused" not in rows(tp)[f"model.layers.{i}.self_attn.q_proj.weight"]  # column-parallel: whole K
    ep = rows(inspect_checkpoint(checkpoint, 90, tp=2, ep=2))
    assert "3x(192x64+64x96)" in ep["model.layers.0.mlp.experts"]  # whole experts: intermediate 96
    assert ep["model.layers.0.mlp.experts"].endswith("triton-moe-w4a16")
    assert "refused" not in ep["model.layers.0.self_attn.o_proj.weight"]
    assert rows(inspect_checkpoint(checkpoint, 90, tp=4, ep=4))["model.layers.0.mlp.experts"].endswith(
        "refused: 6 experts do not divide by --ep-size 4")
    done = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "inspect", str(checkpoint), "--tp", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "refused: w2: K=48 splits a 32-wide scale block" in done.stdout
    done = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "inspect", str(checkpoint), "--tp", "3",
                           "--ep-size", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--ep-size must divide --tp" in done.stderr


def test_an_all_to_all_moe_backend_is_refused_naming_the_flag(monkeypatch, tiny_moe, tmp_path):
    # DeepEP and the other all-to-all backends hand the MoE kernel their own dispatch formats;
    # breccia's kernels take SGLang's standard dispatcher (--ep-size works through it).
    from sglang.srt.layers.moe import utils as moe_utils
    from sglang.srt.layers.moe.utils import MoeA2ABackend

    from breccia_sglang.errors import BrecciaConfigError
    from breccia_sglang.format.experts import expert_weights
    from breccia_sglang.format.reader import BrecciaCheckpoint
    from breccia_sglang.integration.moe_method import BrecciaMoEMethod

    quantize_checkpoint(tiny_moe, tmp_path / "ckpt", make_recipe("fp8"), progress=False)
    experts = expert_weights(BrecciaCheckpoint.open(tmp_path / "ckpt").entries, "model.layers.0.mlp.experts")
    monkeypatch.setattr(moe_utils.get_flags().moe, "a2a_backend", MoeA2ABackend.DEEPEP)
    with pytest.raises(BrecciaConfigError, match=r"model\.layers\.0\.mlp\.experts: .*--moe-a2a-backend deepep"):
        BrecciaMoEMethod(experts).create_weights(torch.nn.Module(), 6, 64, 96, torch.bfloat16,
                                                 weight_loader=None)


def test_experts_with_one_scale_per_row_are_served_as_blocks_that_divide_both_ks(tiny_moe, tmp_path):
    # compressed-tensors "channel" FP8 and GPTQ group -1 experts: gate / up scales span the
    # hidden size (64), down's the intermediate (96). Each layer is served in blocks dividing
    # both, a row's scale repeated along K: 1x32 whole, 1x16 on a rank of --tp 2 (48 columns),
    # which would split the checkpoint's own 96-wide down blocks. Both used to be refused: the
    # projections' labels differ (k=64, k=96), read as two recipes in one layer.
    checkpoint = tmp_path / "ckpt"
    overrides = per_row_experts(0, "fp8-block") + per_row_experts(1, "int4", symmetric=False)
    quantize_checkpoint(tiny_moe, checkpoint, make_recipe("fp8"), overrides=overrides, progress=False)

    def experts(report, layer):
        return next(line for line in report.splitlines() if line.startswith(f"model.layers.{layer}.mlp.experts "))

    whole, tp = inspect_checkpoint(checkpoint, 90), inspect_checkpoint(checkpoint, 90, tp=2)
    assert "block(E4M3,k=row)/per_block_k" in experts(whole, 0) and "int4(g=row,asym)" in experts(whole, 1)
    assert experts(whole, 0).endswith("triton-fused-moe (as 1x32 blocks)")
    assert experts(whole, 1).endswith("triton-moe-w4a16 (as 1x32 blocks)")
    assert experts(tp, 0).endswith("triton-moe-w8a16 (as 1x16 blocks)")  # no W8A8 kernel takes 1x16
    assert experts(tp, 1).endswith("triton-moe-w4a16 (as 1x16 blocks)")
    assert whole.rstrip().endswith("OK") and tp.rstrip().endswith("OK")
