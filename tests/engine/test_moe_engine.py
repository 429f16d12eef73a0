"""Breccia mixture-of-experts weights through the real ``sgl.Engine`` on CPU: a tiny Qwen3-MoE
(3 layers, 6 experts, top-2) whose experts are quantized with every recipe serves, token for
token, what HF transformers serves on the same weights dequantized by breccia.

Two checkpoints cover the six recipes, one per MoE layer (every expert of a layer shares one
recipe, as SGLang runs them as one fused kernel); attention layers take a seventh. The router
(``mlp.gate``) stays high precision, as quantize keeps it by default.
"""

from __future__ import annotations

import re

import pytest

from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint

from ..helpers import (assert_same_greedy_tokens, breccia_tensors, dequantized_hf_checkpoint, hf_argmax_tokens,
                       per_row_experts, run_engine)

pytestmark = pytest.mark.engine

PROMPT = [1, 5, 17, 42, 99, 7, 3, 250, 64]
NEW_TOKENS = 12
# A random model's logits are flat: HF's own top-2 gap falls to 5e-5 on these prompts, where two
# fp32 implementations of the same maths (other summation orders, SGLang's fused top-k) may pick
# either token. Compare up to the first step whose gap is below this.
NEAR_TIE = 1e-3
# checkpoint -> (attention recipe, the experts' recipe of layers 0, 1, 2)
CHECKPOINTS = {
    "fp8-family": (make_recipe("int4", group_size=32, symmetric=False),
                   (make_recipe("fp8"), make_recipe("fp8-block", block_k=32), make_recipe("mxfp8"))),
    "4-bit-family": (make_recipe("fp8-block", block_k=32),
                     (make_recipe("nvfp4"), make_recipe("int4", group_size=32),
                      make_recipe("int4", group_size=32, symmetric=False))),
}


def quantize(tiny_moe, dest, attention, experts, overrides=()):
    """``experts``: one recipe per MoE layer; ``overrides`` come first (``quantize_checkpoint``)."""
    overrides += tuple((f"model.layers.{i}.mlp.experts.*", recipe) for i, recipe in enumerate(experts))
    return quantize_checkpoint(tiny_moe, dest, attention, overrides=overrides, progress=False)


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def served(request, tiny_moe, tmp_path_factory):
    attention, experts = CHECKPOINTS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    report = quantize(tiny_moe, tmp / "ckpt", attention, experts)
    spec = {"env": {"BRECCIA_SGLANG_FP8_KV": "0"},  # KV in fp32 like HF: only the weights differ
            "engine": {"model_path": str(tmp / "ckpt"), "device": "cpu", "max_total_tokens": 1024,
                       "quantization": "breccia", "skip_tokenizer_init": True, "log_level": "info"},
            "requests": [{"input_ids": PROMPT,
                          "sampling_params": {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}}]}
    result = run_engine(spec, tmp)
    assert result["ok"], result
    return tmp / "ckpt", report, result, experts


def test_every_expert_recipe_serves_hfs_tokens_on_the_dequantized_weights(served, tiny_moe, tmp_path):
    checkpoint, _, result, _ = served
    reference, gaps = hf_argmax_tokens(dequantized_hf_checkpoint(tiny_moe, checkpoint, tmp_path / "hf"), PROMPT,
                                       NEW_TOKENS)
    assert_same_greedy_tokens(result["results"][0]["output_ids"], reference, gaps, NEAR_TIE, at_least=6)


def test_experts_are_quantized_and_routers_kept_high_precision(served):
    checkpoint, report, _, experts = served
    scaled = breccia_tensors(checkpoint)
    for layer, recipe in enumerate(experts):
        names = [n for n in scaled if n.startswith(f"model.layers.{layer}.mlp.experts.")]
        assert len(names) == 6 * 3  # every expert's gate, up and down projection
        assert {scaled[n].recipe.name for n in names} == {recipe.name}
    kept = {name for name, _ in report.kept}
    assert {f"model.layers.{i}.mlp.gate.weight" for i in range(3)} <= kept
    assert not any(".mlp.gate.weight" in n for n in scaled)


def test_the_log_names_the_expert_kernel_of_each_recipe(served):
    _, _, result, experts = served
    announced = re.findall(r"breccia-sglang: MoE experts \((.+?), 6 per layer\) run kernel (\S+)", result["stderr"])
    assert {label.split("(")[0] for label, _ in announced} == {r.name for r in experts}
    assert {kernel for _, kernel in announced} == {"emulated"}  # CPU: the fused Triton kernels need CUDA


def test_the_resident_bytes_count_the_experts(served):
    _, _, result, experts = served
    line = re.search(r"(\d+) quantized layers \(linear and MoE\) hold .* \[bytes (\d+) / (\d+)\]", result["stderr"])
    assert line, result["stderr"][-2000:]
    layers, held, bf16 = map(int, line.groups())
    assert layers == 3 * 2 + 3  # qkv_proj and o_proj per layer, and the 3 MoE layers
    # Experts are 6 * (2 * 96 * 64 + 64 * 96) elements per layer, 5.6x the attention weights:
    # 1 byte per element (FP8) or half a byte (4-bit), plus scales, against 2 in BF16.
    assert held < (0.6 if experts[0].name in ("current", "delayed") else 0.45) * bf16


def serve_on_two_ranks(tiny_moe, tmp_path, experts, overrides=(), **engine) -> dict:
    """The tiny MoE with these expert recipes (attention in FP8), served at tp=2 over gloo, one
    core a rank; ``engine`` adds to (or replaces) the engine's arguments."""
    quantize(tiny_moe, tmp_path / "ckpt", make_recipe("fp8"), experts, overrides)
    spec = {"env": {"BRECCIA_SGLANG_FP8_KV": "0", "SGLANG_CPU_OMP_THREADS_BIND": "0|1"},
            "engine": {"model_path": str(tmp_path / "ckpt"), "device": "cpu", "max_total_tokens": 1024, "tp_size": 2,
                       "quantization": "breccia", "skip_tokenizer_init": True, "log_level": "error", **engine},
            "requests": [{"input_ids": PROMPT,
                          "sampling_params": {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}}]}
    return run_engine(spec, tmp_path)


def assert_serves_hfs_tokens(result, tiny_moe, tmp_path) -> None:
    assert result["ok"], result
    reference, gaps = hf_argmax_tokens(dequantized_hf_checkpoint(tiny_moe, tmp_path / "ckpt", tmp_path / "hf"), PROMPT,
                                       NEW_TOKENS)
    assert_same_greedy_tokens(result["results"][0]["output_ids"], reference, gaps, NEAR_TIE, at_least=6)


def test_tensor_parallel_experts_serve_hfs_tokens(tiny_moe, tmp_path):
    # tp=2: each rank holds half of every expert's intermediate (96 -> 48), so the down
    # projection's K blocks, groups and zero points are narrowed by SGLang's FusedMoE loader.
    # 48 takes 16-wide blocks only (MXFP8 needs 32): NVFP4 in layer 2, and layers 0 and 1 with
    # one scale per row, zero-point INT4 (GPTQ group -1) and FP8 (compressed-tensors "channel"),
    # served as 1x16 blocks: each row's scale and zero point repeated along K, then narrowed.
    overrides = (per_row_experts(0, "int4", symmetric=False) + per_row_experts(1, "fp8-block")
                 + (("model.layers.2.mlp.experts.*", make_recipe("nvfp4")),))
    result = serve_on_two_ranks(tiny_moe, tmp_path, (), overrides, log_level="info")
    assert_serves_hfs_tokens(result, tiny_moe, tmp_path)
    announced = set(re.findall(r"MoE experts \((.+?), 6 per layer\) run kernel", result["stderr"]))
    assert {"int4(g=row,asym)/per_block_k, served as 1x16 blocks",
            "block(E4M3,k=row)/per_block_k, served as 1x16 blocks"} < announced


def test_expert_parallel_ranks_serve_hfs_tokens_in_blocks_tensor_parallelism_would_split(tiny_moe, tmp_path):
    # ep=2 over tp=2: each rank holds 3 whole experts (moe_tp_size 1), so 32-wide blocks serve
    # here, where tp=2 alone cuts the 96-wide intermediate into 48-column shards that split them
    # (refused: the next test). SGLang's dispatcher hands each rank -1 for the pairs of the other
    # rank's experts, which must add nothing; FusedMoE's all-reduce sums the two ranks.
    experts = (make_recipe("int4", group_size=32, symmetric=False), make_recipe("fp8-block", block_k=32),
               make_recipe("mxfp8"))
    result = serve_on_two_ranks(tiny_moe, tmp_path, experts, ep_size=2, log_level="info")
    assert_serves_hfs_tokens(result, tiny_moe, tmp_path)
    announced = re.findall(r"MoE experts \((.+?), 6 per layer, 3 on each of 2 expert-parallel ranks\) run kernel",
                           result["stderr"])
    assert {label.split("(")[0] for label in announced} == {r.name for r in experts}


def test_tensor_parallel_experts_whose_shard_splits_a_block_are_refused_by_name(tiny_moe, tmp_path):
    # On CPU, SGLang pads the expert intermediate for tp (96 -> 128, 64 a rank) but loads the
    # checkpoint in 48-column shards, so a 32-wide block straddles the ranks. Before the layer
    # was sized by what the loader fills, this served with misplaced scales and wrong tokens.
    experts = (make_recipe("int4", group_size=32, symmetric=False),) + (make_recipe("nvfp4"),) * 2
    with pytest.raises(RuntimeError) as failure:  # the failed scheduler takes the engine process down
        serve_on_two_ranks(tiny_moe, tmp_path, experts)
    assert "model.layers.0.mlp.experts: no kernel can serve this layer" in str(failure.value)
    assert "emulated: w2: K=48 splits a 32-wide scale block" in str(failure.value)
