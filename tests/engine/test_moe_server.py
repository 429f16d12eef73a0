"""``python -m sglang.launch_server --breccia-format`` on CPU serving a breccia MoE model over HTTP,
with the FP8 KV cache on (its default for breccia models): the tiny Qwen3-MoE with the demo
model's tokenizer, experts in block FP8 and attention in INT4."""

from __future__ import annotations

import re

import pytest

from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint
from breccia_sglang.harness.demo_moe import build_tiny_moe
from breccia_sglang.harness.server import CPU_ARGS, SGLangServer

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "Name a primary colour."}]


@pytest.fixture(scope="module")
def server(demo_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moe-server")
    model = build_tiny_moe(tmp / "model", tokenizer_dir=demo_model)
    quantize_checkpoint(model, tmp / "ckpt", make_recipe("int4", group_size=32),
                        overrides=(("*.mlp.experts.*", make_recipe("fp8-block", block_k=32)),), progress=False)
    with SGLangServer(tmp / "ckpt", "--breccia-format", *CPU_ARGS, "--enable-cache-report",
                      log_path=tmp / "server.log") as srv:
        yield srv


def test_a_breccia_moe_model_chats_over_http_and_reuses_its_fp8_kv_prefix(server):
    first = server.chat(QUESTION, max_tokens=8)
    again = server.chat(QUESTION, max_tokens=8)
    assert first["prompt_tokens"] > 0 and isinstance(first["text"], str)
    assert 0 < again["cached_tokens"] <= again["prompt_tokens"] == first["prompt_tokens"]
    assert again["text"] == first["text"]  # the prefix hit reads the same FP8 pages and scales


def test_the_log_names_the_expert_kernel_and_the_fp8_kv_cache(server):
    log = server.log_tail(400)
    assert re.search(r"MoE experts \(block\(E4M3,k=32\)/per_block_k, 6 per layer\) run kernel emulated", log), log
    assert "FP8 KV cache with one scale per (token, kv head)" in log
    assert server.get("/server_info")["quantization"] == "breccia"
