"""``benchmarks/bench_accuracy.py`` at a tiny size on the demo model: its numbers must be consistent.

The benchmark runs once per module as a subprocess (it starts one engine process per
configuration itself) with two configurations: the unquantized reference and breccia FP8
weights + breccia FP8 KV. The tests read its JSON. A few checks of the prompt building and
the scoring need no engine.
"""

from __future__ import annotations

import math

import pytest


import bench_accuracy

from ..helpers import run_benchmark

QUANTIZED = "fp8+breccia-fp8-kv"
TEXT_TOKENS = 48
CHAT_TOKENS = 8
NEEDLE_CONTEXT = 256


@pytest.fixture(scope="module")
def bench(demo_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("accuracy") / "accuracy.json"
    # The reference is left out of --configs on purpose: it must run (first) anyway.
    report, stdout = run_benchmark(
        "bench_accuracy.py", "--configs", QUANTIZED, "--model", demo_model, "--text-tokens", TEXT_TOKENS,
        "--chat-prompts", "1", "--chat-tokens", CHAT_TOKENS, "--needle-context", NEEDLE_CONTEXT,
        "--needle-depths", "0.5", out=out)
    return report, {c["config"]: c for c in report["configs"]}, out, stdout


@pytest.mark.engine
def test_the_reference_runs_first_and_every_config_succeeds(bench):
    _, configs, _, _ = bench
    assert list(configs) == [bench_accuracy.REFERENCE, QUANTIZED]
    for name, config in configs.items():
        assert config["ok"], (name, config.get("error"))


@pytest.mark.engine
def test_perplexities_are_finite_and_scored_on_the_requested_tokens(bench):
    report, configs, _, _ = bench
    assert report["workload"]["text_tokens"] == TEXT_TOKENS
    for name, config in configs.items():
        text = config["text"]
        assert text["tokens_scored"] == TEXT_TOKENS - 1, name  # nothing predicts the first token
        assert math.isfinite(text["perplexity"]) and text["perplexity"] > 1, name


@pytest.mark.engine
def test_the_reference_agrees_with_itself_and_reproduces_hf_fp32(bench):
    report, configs, _, _ = bench
    reference = configs[bench_accuracy.REFERENCE]
    assert reference["text"]["top1_agreement"] == 1.0
    assert reference["text"]["mean_abs_logprob_diff"] == 0.0
    assert reference["chat"]["token_agreement"] == 1.0
    hf = report["hf_fp32"]
    assert hf["reference_perplexity"] == reference["text"]["perplexity"]
    # Both fp32; only the kernels' summation order differs (measured: 1e-5 relative, agreement 1.0).
    # A logprob read from the wrong position would be off by orders of magnitude more.
    assert abs(hf["reference_perplexity"] / hf["perplexity"] - 1) < 1e-3
    assert hf["reference_top1_agreement"] >= 0.98


@pytest.mark.engine
def test_the_quantized_config_is_scored_against_the_reference_and_differs_from_it(bench):
    _, configs, _, _ = bench
    quantized = configs[QUANTIZED]
    assert 0.0 <= quantized["text"]["top1_agreement"] <= 1.0
    assert 0.0 <= quantized["chat"]["token_agreement"] <= 1.0
    # FP8 weights and KV change every logprob a little (measured ~0.2 nats on average): a zero
    # here would mean the quantized checkpoint was not what got served.
    assert quantized["text"]["mean_abs_logprob_diff"] > 1e-3
    assert quantized["checkpoint"]["quantized_weights"] == 210  # 30 layers x 7 linears
    assert quantized["checkpoint"]["recipe"] == "fp8"
    # E4M3's 3 mantissa bits with one well-chosen scale: ~31 dB on these weights (measured 31.5).
    assert 28 < quantized["checkpoint"]["weight_sqnr_db"] < 36


@pytest.mark.engine
def test_chat_outputs_have_the_requested_token_counts(bench):
    report, configs, _, _ = bench
    assert report["workload"]["chat_tokens"] == CHAT_TOKENS
    for name, config in configs.items():
        chat = config["chat"]
        assert chat["prompts"] == 1, name
        assert chat["tokens_per_prompt"] == [CHAT_TOKENS], name
        assert [len(p["output_ids"]) for p in chat["per_prompt"]] == [CHAT_TOKENS], name
        row = chat["per_prompt"][0]
        assert (row["first_divergence"] is None) == (row["agreement"] == 1.0), name


@pytest.mark.engine
def test_the_needle_prompt_has_the_requested_length_and_the_reference_finds_it(bench):
    _, configs, _, _ = bench
    for name, config in configs.items():
        needle = config["needle"]
        [result] = needle["results"]
        # The prompt and its answer (8 tokens by default) fit the context, with little to spare.
        assert NEEDLE_CONTEXT - 8 - 16 <= result["prompt_tokens"] <= NEEDLE_CONTEXT - 8, name
        assert needle["exact_match"] == float(result["correct"]), name
    # At 256 tokens the fp32 demo model answers " 48213." (deterministic, greedy).
    assert configs[bench_accuracy.REFERENCE]["needle"]["results"][0]["correct"]


@pytest.mark.engine
def test_each_engine_built_the_kv_pool_its_config_names(bench):
    _, configs, _, _ = bench
    layers_heads = 30 * 3  # SmolLM2: 30 layers, 3 KV heads, head_dim 64
    expected = {bench_accuracy.REFERENCE: 2 * 64 * 4 * layers_heads,  # fp32 K and V
                QUANTIZED: (2 * 64 + 2 * 4) * layers_heads}  # fp8 K and V + one fp32 scale each
    for name, config in configs.items():
        engine = config["engine"]
        assert engine["model_dtype"] == "float32", name
        assert engine["expected_kv_bytes_per_token"] == expected[name], name
        # SGLang reports the pool in GiB rounded to 3 decimals: ~1% at this pool size.
        assert abs(engine["kv_bytes_per_token"] / expected[name] - 1) < 0.02, name


@pytest.mark.engine
def test_report_records_the_machine_and_command_and_writes_a_png(bench):
    report, _, out, stdout = bench
    for key in ("cpu", "torch", "sglang", "breccia"):
        assert report["machine"][key], key
    assert "bench_accuracy.py" in report["command"] and "--configs" in report["command"]
    assert report["date"]
    png = out.with_suffix(".png")
    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert QUANTIZED in stdout  # the printed table


# --- no engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)


@pytest.mark.parametrize("depth", [0.1, 0.5, 0.9])
def test_needle_sits_at_its_depth_inside_the_context(tokenizer, depth):
    needle = bench_accuracy.needle_prompt(tokenizer, 1000, depth, "48213")
    text = tokenizer.decode(needle["input_ids"])
    assert text.count("The secret code is 48213.") == 1
    assert text.endswith(bench_accuracy.NEEDLE_QUESTION + "<|im_end|>\n<|im_start|>assistant\n"
                         + bench_accuracy.ANSWER_PREFIX)
    assert 1000 - 16 <= needle["prompt_tokens"] <= 1000
    assert len(needle["input_ids"]) == needle["prompt_tokens"]
    # After the first sentence end past `depth` of the haystack: within a sentence or two of it.
    assert depth <= needle["depth_actual"] <= depth + 0.15


def test_scores_follow_their_formulas():
    text = {"logprobs": [-1.0, -2.0, -3.0], "top1_ids": [5, 6, 7]}
    other = {"logprobs": [-1.5, -2.0, -2.0], "top1_ids": [5, 9, 7]}
    scores = bench_accuracy.text_scores(other, text)
    assert scores["perplexity"] == pytest.approx(math.exp(5.5 / 3))
    assert scores["top1_agreement"] == pytest.approx(2 / 3)
    assert scores["mean_abs_logprob_diff"] == pytest.approx(0.5)
    assert bench_accuracy.first_divergence([1, 2, 3], [1, 2, 4]) == 2
    assert bench_accuracy.first_divergence([1, 2, 3], [1, 2, 3]) is None


def test_a_kv_pool_of_the_wrong_format_is_refused():
    config = bench_accuracy.CONFIGS["fp8+breccia-fp8-kv"]
    model_config = {"head_dim": 64, "num_key_value_heads": 3, "num_hidden_layers": 30}
    fp32_pool = {"model_dtype": "float32", "max_total_num_tokens": 4096, "kvcache_gib": 0.176}
    with pytest.raises(RuntimeError, match="model dtype KV pool"):
        bench_accuracy.check_kv_format(config, fp32_pool, model_config)
    breccia_pool = {**fp32_pool, "kvcache_gib": 0.047}
    assert bench_accuracy.check_kv_format(config, breccia_pool, model_config)["expected_kv_bytes_per_token"] == 12240
