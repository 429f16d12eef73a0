"""The breccia FP8 KV cache inside a real ``sgl.Engine`` on CPU (the default for breccia models)."""

from __future__ import annotations

import pytest
from ..helpers import run_engine, view_spy_counts, view_spy_env

pytestmark = pytest.mark.engine

GREEDY = {"temperature": 0, "max_new_tokens": 16}
MAX_TOKENS = 4096


def _chat_ids(tokenizer, turns):
    ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture(scope="module", params=[1, 16], ids=["page1", "page16"])
def fp8_kv_run(request, demo_fp8, tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_fp8)
    turn1 = [{"role": "user", "content": "What is the capital of France?"}]
    turn2 = turn1 + [{"role": "assistant", "content": "The capital of France is Paris."},
                     {"role": "user", "content": "Name one famous landmark there."}]
    first, second = _chat_ids(tokenizer, turn1), _chat_ids(tokenizer, turn2)
    spy = tmp_path_factory.mktemp(f"spy{request.param}")
    spec = {
        "enable": False,
        "env": view_spy_env(spy),
        "engine": {"model_path": str(demo_fp8), "device": "cpu", "max_total_tokens": MAX_TOKENS,
                   "page_size": request.param, "quantization": "breccia", "log_level": "error"},
        "requests": [
            {"input_ids": first, "sampling_params": GREEDY},   # miss
            {"input_ids": second, "sampling_params": GREEDY},  # turn 2: reuses turn 1's prefix
            {"input_ids": second, "sampling_params": GREEDY},  # full hit
            {"flush": True},
            {"input_ids": second, "sampling_params": GREEDY},  # recomputed from scratch
        ],
    }
    result = run_engine(spec, tmp_path_factory.mktemp(f"kv{request.param}"))
    assert result["ok"], result
    result["spy"] = view_spy_counts(spy)
    return request.param, first, second, result


def test_multi_turn_chat_reuses_its_prefix(fp8_kv_run):
    page_size, first, _second, result = fp8_kv_run
    miss, turn2, _, _ = result["results"]
    assert miss["cached_tokens"] == 0
    # Turn 2's prompt starts with turn 1's prompt; its page-aligned part comes from the cache.
    assert turn2["cached_tokens"] >= (len(first) - 1) // page_size * page_size > 0
    assert "Paris" in miss["text"]


def test_tokens_are_identical_from_the_cache_and_recomputed(fp8_kv_run):
    _, _, second, result = fp8_kv_run
    turn2, hit, recomputed = result["results"][1:]
    assert hit["cached_tokens"] > turn2["cached_tokens"]
    assert recomputed["cached_tokens"] == 0
    assert hit["output_ids"] == turn2["output_ids"] == recomputed["output_ids"]


def test_engine_reports_the_fp8_pool_with_its_scale_bytes(fp8_kv_run, demo_fp8):
    import json

    page_size, _, _, result = fp8_kv_run
    config = json.loads((demo_fp8 / "config.json").read_text())
    heads, layers = config["num_key_value_heads"], config["num_hidden_layers"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert result["max_total_num_tokens"] == MAX_TOKENS
    # SGLang's own report (GiB, 3 decimals) of the pool it built: FP8 K and V plus one fp32
    # scale per (token, head) for each, for every slot including the padding page.
    expected = (MAX_TOKENS + page_size) * heads * layers * (2 * head_dim + 2 * 4) / 2**30
    assert result["memory_usage"]["kvcache"] == pytest.approx(expected, abs=1e-3)


def test_the_torch_backend_reads_the_cache_through_paged_views(fp8_kv_run, demo_fp8):
    # breccia_torch is what a CPU engine runs: SGLang's SDPA loop reads each request's K and V
    # of each layer as PagedScaledTensor(slots).dequantize(), counted in the scheduler process.
    import json

    _, _, second, result = fp8_kv_run
    layers = json.loads((demo_fp8 / "config.json").read_text())["num_hidden_layers"]
    spy = result["spy"]
    generated = sum(len(r["output_ids"]) for r in result["results"])
    # At least one K and one V read per layer per forward pass (prefill or decode step).
    assert spy["dequantize_calls"] >= 2 * layers * generated, spy
    # Every read is a view of the tokens a request attends to: the longest is the whole prompt
    # and answer, so on average fewer tokens than that per read.
    assert 0 < spy["dequantized_tokens"] <= spy["dequantize_calls"] * (len(second) + GREEDY["max_new_tokens"])
    assert spy["batch_views"] == 0  # the torch loop reads one request at a time
