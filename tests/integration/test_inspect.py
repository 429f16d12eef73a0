"""``breccia-sglang inspect --capability N``: the kernel each layer would get on a GPU that is not
here, for checkpoints breccia itself wrote (one file, and sharded with an index); with ``--gpu
NAME``, the batch routes that GPU model's tuned file gives each FP8 kernel too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import breccia
import pytest
import torch
from breccia.bridges import save_safetensors

from breccia_sglang import names
from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint
from breccia_sglang.integration.inspect_report import inspect_checkpoint

from .test_gemm_choice import EXPECTED, RECIPES

TARGETS = {None: 0, 80: 1, 89: 2, 90: 3}  # the column of EXPECTED: CPU (here), sm_80, sm_89, sm_90
LAYERS = ("model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.o_proj.weight")


def write_checkpoint(path, recipe_name: str, sharded: bool):
    """Two layers of one recipe, with breccia's own writer; sharded: one file each and an index."""
    path.mkdir()
    gen = torch.Generator().manual_seed(0)
    tensors = {name: breccia.cast(torch.randn(256, 512, generator=gen), RECIPES[recipe_name]) for name in LAYERS}
    if not sharded:
        save_safetensors(tensors, str(path / "model.safetensors"))
        return path
    weight_map = {}
    for i, (name, st) in enumerate(tensors.items()):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_safetensors({name: st}, str(path / file))
        weight_map.update({f"{name}.{part}": file for part in ("data", "scale", "zero_point")
                           if part != "zero_point" or st.zero_point is not None})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def kernels_in(report: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[-1] for line in report.splitlines() if line.startswith(LAYERS)}


@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
@pytest.mark.parametrize("recipe", list(EXPECTED))
def test_inspect_shows_the_intended_kernel_on_each_gpu(recipe, sharded, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", recipe, sharded)
    for capability, column in TARGETS.items():
        report = inspect_checkpoint(checkpoint, capability)
        assert kernels_in(report) == {name: EXPECTED[recipe][column] for name in LAYERS}, (capability, report)
        assert report.rstrip().endswith(f"in {2 if sharded else 1} file(s): OK")
        if capability:
            assert f"kernel on sm_{capability}" in report.splitlines()[0]


def test_the_command_takes_the_capability(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", "fp8-block-128", sharded=True)
    done = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "inspect", str(checkpoint), "--capability", "90"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert set(kernels_in(done.stdout).values()) == {"blockscale-sm90"}
    here = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "inspect", str(checkpoint)],
                          capture_output=True, text=True, timeout=300)
    assert set(kernels_in(here.stdout).values()) == {"emulated"} and "this machine (cpu)" in here.stdout


def test_inspect_takes_the_activation_dtype_which_decides_nvfp4s_kernel(tmp_path):
    # FP4 Marlin serves NVFP4 in float16 only; in bfloat16 our Triton W4A16 kernel does.
    checkpoint = write_checkpoint(tmp_path / "ckpt", "nvfp4", sharded=False)
    report = inspect_checkpoint(checkpoint, 90, dtype="float16")
    assert set(kernels_in(report).values()) == {"marlin-nvfp4"} and "kernel on sm_90, float16" in report
    done = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "inspect", str(checkpoint), "--capability", "90",
                           "--dtype", "bfloat16"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert set(kernels_in(done.stdout).values()) == {"triton-w4a16"} and "kernel on sm_90, bfloat16" in done.stdout


def kernel_columns(report: str) -> set[str]:
    """The kernel column of the two layers' rows, routes included (everything after the size)."""
    return {line.split("KiB", 1)[1].strip() for line in report.splitlines() if line.startswith(LAYERS)}


@pytest.mark.parametrize("recipe,capability,column", [
    ("mxfp8", 90, "triton-block-fp8 (M >= 512: dequantized + dense GEMM)"),
    ("fp8-block-64", 90, "triton-block-fp8 (M >= 512: dequantized + dense GEMM)"),
    ("fp8-block-128", 90, "blockscale-sm90"),  # faster there than the route would be
    ("fp8", 90, "sglang-fp8-linear"),
    ("int4", 90, "marlin-int4"),  # SGLang's kernel: no route
    ("nvfp4", 90, "triton-w4a16 (M >= 128: dequantized + dense GEMM)"),  # bf16: FP4 Marlin takes fp16 only
    ("fp8-block-64", 80, "triton-w8a16 (M >= 512: dequantized + dense GEMM)"),
])
def test_inspect_on_a_named_gpu_model_shows_its_batch_routes(recipe, capability, column, tmp_path, monkeypatch):
    # The H200's shipped tuned file routes prefill-sized batches of fine scale groups (1x32,
    # MXFP8, 1x64) and of 4-bit layers on our W4A16 kernel to the dequantized weight; a
    # capability asked for with that model's name reads the same file.
    for variable in (names.ENV_W8A16_UP_TO_M, names.ENV_DEQUANTIZE_FROM_M, names.ENV_BLOCK_FP8_CONFIGS):
        monkeypatch.delenv(variable, raising=False)
    checkpoint = write_checkpoint(tmp_path / "ckpt", recipe, sharded=False)
    report = inspect_checkpoint(checkpoint, capability, gpu="NVIDIA H200")
    assert kernel_columns(report) == {column}, report
    assert "(NVIDIA H200's batch routes)" in report.splitlines()[0]
    assert kernel_columns(inspect_checkpoint(checkpoint, capability)) == {column.split()[0]}  # no model: no routes


def test_the_command_takes_the_gpu_model_and_the_variables(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", "fp8", sharded=False)
    env = {**os.environ, names.ENV_W8A16_UP_TO_M: "16", names.ENV_DEQUANTIZE_FROM_M: "1024"}
    done = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "inspect", str(checkpoint), "--capability", "89",
                           "--gpu", "NVIDIA L40S"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert kernel_columns(done.stdout) == {"sglang-fp8-linear (M <= 16: triton-w8a16; M >= 1024: dequantized + "
                                           "dense GEMM)"}


def test_one_scale_per_row_is_whole_on_each_rank_and_a_split_block_is_refused(tiny_llama, tmp_path):
    # o_proj's K = 64. Blocks as wide as K are one scale per row: each of --tp 2's 32-column
    # shards keeps it (test_recipes_engine serves that). 32-wide blocks at --tp 4 leave 16
    # columns a rank, half a block: refused, by name.
    per_row, blocks = tmp_path / "per_row", tmp_path / "blocks"
    quantize_checkpoint(tiny_llama, per_row, make_recipe("fp8-block", block_k=64), progress=False)
    quantize_checkpoint(tiny_llama, blocks, make_recipe("fp8-block", block_k=32), progress=False)

    def o_proj(report):
        return next(line for line in report.splitlines() if line.startswith("model.layers.0.self_attn.o_proj"))

    assert o_proj(inspect_checkpoint(per_row, 90, tp=2)).endswith("sglang-fp8-channel")
    assert o_proj(inspect_checkpoint(per_row, 80, tp=2)).endswith("triton-w8a16")
    assert o_proj(inspect_checkpoint(blocks, 90, tp=4)).endswith("refused: K=16 splits a 32-wide scale block")


def test_attention_heads_that_do_not_split_over_tp_are_refused_by_their_config_key(tiny_llama, tmp_path):
    # SGLang's attention layers assert, with no message, that the query heads divide by tp and
    # that the key / value heads divide by tp or divide it (each then replicated); a server that
    # fails it stops while building the model. The tiny Llama's 4 / 2 heads split over --tp 2 and
    # 4; with 6 / 3 heads --tp 2 splits the query heads but not the 3 kv heads, and --tp 4
    # neither. The weights' shapes do not enter: only config.json's head counts.
    quantize_checkpoint(tiny_llama, tmp_path / "ckpt", make_recipe("fp8"), progress=False)
    for tp in (2, 4):
        assert inspect_checkpoint(tmp_path / "ckpt", 90, tp=tp).endswith("OK")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "num_attention_heads": 6, "num_key_value_heads": 3}))

    def refusals(report):
        return [line for line in report.splitlines() if line.startswith("config.json: refused")]

    assert refusals(inspect_checkpoint(tmp_path / "ckpt", 90, tp=2)) == [
        "config.json: refused: 3 key / value heads (num_key_value_heads) neither divide by --tp 2 nor divide it"]
    four = inspect_checkpoint(tmp_path / "ckpt", 90, tp=4)
    assert refusals(four) == [
        "config.json: refused: 6 attention heads (num_attention_heads) do not divide by --tp 4",
        "config.json: refused: 3 key / value heads (num_key_value_heads) neither divide by --tp 4 nor divide it"]
    assert four.endswith("the attention heads do not split over --tp 4 (shown above)")
    assert inspect_checkpoint(tmp_path / "ckpt", 90).endswith("OK")  # one GPU holds every head
    done = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "inspect", str(tmp_path / "ckpt"), "--tp", "4"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "6 attention heads (num_attention_heads) do not divide by --tp 4" in done.stdout
