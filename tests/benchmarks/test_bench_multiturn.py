"""``benchmarks/bench_multiturn.py`` at a tiny size on the demo model: its numbers must add up.

The benchmark runs once per module as a subprocess (it starts one engine process per
configuration itself); the tests read its JSON. A few checks of the workload and the
statistics need no engine.
"""

from __future__ import annotations


import pytest


import bench_multiturn
import _multiturn_worker as worker

from ..helpers import run_benchmark

CONFIGS = ("bf16-kv", "breccia-fp8-weights+breccia-fp8-kv")
OUTPUT_LEN = 4
TURNS = 2
PROMPTS = 2  # 1 group x 2 prompts


@pytest.fixture(scope="module")
def bench(demo_model, demo_fp8, tmp_path_factory):
    out = tmp_path_factory.mktemp("multiturn") / "multiturn.json"
    report, stdout = run_benchmark(
        "bench_multiturn.py", "--configs", ",".join(CONFIGS), "--model", demo_model, "--breccia-model", demo_fp8,
        "--groups", "1", "--prompts-per-group", PROMPTS, "--turns", TURNS, "--output-len", OUTPUT_LEN,
        "--system-prompt-len", "64", "--question-len", "16", "--concurrency", "2", "--max-total-tokens", "1024",
        out=out)
    return report, {c["config"]: c for c in report["configs"]}, out, stdout



@pytest.mark.engine
def test_every_config_ran_every_request_without_errors(bench):
    report, configs, _, _ = bench
    assert list(configs) == list(CONFIGS)
    for name, config in configs.items():
        assert config["ok"], config.get("error")
        assert len(config["records"]) == PROMPTS * TURNS, name
        assert [r["error"] for r in config["records"]] == [None] * (PROMPTS * TURNS), name
        assert config["summary"]["overall"]["errors"] == 0
        assert [t["errors"] for t in config["summary"]["per_turn"]] == [0] * TURNS


@pytest.mark.engine
def test_hit_rates_are_fractions_that_match_the_requests(bench):
    _, configs, _, _ = bench
    for config in configs.values():
        for turn in config["summary"]["per_turn"]:
            records = [r for r in config["records"] if r["turn"] == turn["turn"]]
            assert 0.0 <= turn["cache_hit_rate"] <= 1.0
            assert turn["cache_hit_rate"] == pytest.approx(
                sum(r["cached_tokens"] for r in records) / sum(r["prompt_tokens"] for r in records))
        assert all(0 <= r["cached_tokens"] <= r["prompt_tokens"] for r in config["records"])


@pytest.mark.engine
def test_turn_two_reuses_turn_one_from_the_prefix_cache(bench):
    _, configs, _, _ = bench
    for name, config in configs.items():
        first = {r["conversation"]: r for r in config["records"] if r["turn"] == 1}
        for second in (r for r in config["records"] if r["turn"] == 2):
            earlier = first[second["conversation"]]
            # Turn 2's prompt is turn 1's prompt + answer + a new question; the pool (1024
            # BF16 tokens) holds both conversations, so all of turn 1 but its last output
            # token (never run through the model) comes from the cache.
            assert second["prompt_tokens"] > earlier["prompt_tokens"] + earlier["output_tokens"], name
            assert second["cached_tokens"] >= earlier["prompt_tokens"] + earlier["output_tokens"] - 1 > 0, name
        turns = config["summary"]["per_turn"]
        assert turns[1]["cached_tokens"] > 0 and turns[1]["cache_hit_rate"] > turns[0]["cache_hit_rate"], name


@pytest.mark.engine
def test_output_tokens_are_requests_times_output_len(bench):
    _, configs, _, _ = bench
    for config in configs.values():
        overall = config["summary"]["overall"]
        assert overall["output_tokens"] == overall["requests"] * OUTPUT_LEN == PROMPTS * TURNS * OUTPUT_LEN
        assert all(r["output_tokens"] == len(r["output_ids"]) == OUTPUT_LEN for r in config["records"])
        assert overall["output_tok_per_s"] == pytest.approx(overall["output_tokens"] / overall["duration_s"])
        assert overall["req_per_s"] == pytest.approx(overall["requests"] / overall["duration_s"])


@pytest.mark.engine
def test_ttft_and_tpot_fit_inside_each_request(bench):
    _, configs, _, _ = bench
    for config in configs.values():
        for r in config["records"]:
            assert 0 < r["ttft_s"] <= r["latency_s"]
            assert r["tpot_s"] * (r["output_tokens"] - 1) == pytest.approx(r["latency_s"] - r["ttft_s"])
        overall = config["summary"]["overall"]
        for key in ("ttft_ms", "tpot_ms", "latency_ms"):
            assert 0 < overall[key]["median"] <= overall[key]["p99"]
        assert overall["ttft_ms"]["p99"] <= overall["latency_ms"]["p99"]
        # Every request ran inside its turn's wave, and the waves did not overlap.
        for wave, later in zip(config["waves"], config["waves"][1:]):
            assert wave["end_s"] <= later["start_s"]
        for r in config["records"]:
            wave = config["waves"][r["turn"] - 1]
            assert wave["start_s"] <= r["start_s"] and r["start_s"] + r["latency_s"] <= wave["end_s"] + 1e-6


@pytest.mark.engine
def test_peak_tokens_cover_the_largest_request(bench):
    _, configs, _, _ = bench
    for config in configs.values():
        for turn in config["summary"]["per_turn"]:
            records = [r for r in config["records"] if r["turn"] == turn["turn"]]
            largest = max(r["prompt_tokens"] + r["output_tokens"] for r in records)
            assert largest <= turn["peak_inflight_tokens"] <= sum(r["prompt_tokens"] + r["output_tokens"]
                                                                   for r in records)


@pytest.mark.engine
def test_engine_reported_kv_peaks_fit_the_pool_and_the_requests(bench):
    _, configs, _, _ = bench
    for name, config in configs.items():
        pool = config["engine"]["max_total_num_tokens"]
        for turn in config["summary"]["per_turn"]:
            records = [r for r in config["records"] if r["turn"] == turn["turn"]]
            # At a decode step a running request holds at least its whole prompt in the pool.
            assert max(r["prompt_tokens"] for r in records) < turn["engine_peak_kv_tokens"] <= pool, name
            assert 1 <= turn["engine_peak_running_reqs"] <= PROMPTS, name


@pytest.mark.engine
def test_same_first_turn_prompts_and_equal_kv_memory_across_configs(bench):
    report, configs, _, _ = bench
    bf16, fp8 = (configs[name] for name in CONFIGS)
    first_turn = [[r["prompt_tokens"] for r in c["records"] if r["turn"] == 1] for c in (bf16, fp8)]
    assert first_turn[0] == first_turn[1] == report["workload"]["first_turn_prompt_tokens"]
    # Equal memory: breccia's pool holds 2D/(D+4) = 128/68 of BF16's tokens (D=64) in the same bytes.
    assert bf16["engine"]["max_total_num_tokens"] == 1024
    assert fp8["engine"]["max_total_num_tokens"] == 1024 * 256 // 136
    assert bf16["engine"]["model_dtype"] == fp8["engine"]["model_dtype"] == "bfloat16"
    kv_gib = [float(c["engine"]["memory_usage"]["kvcache"]) for c in (bf16, fp8)]
    assert kv_gib[1] == pytest.approx(kv_gib[0], abs=2e-3)  # SGLang reports GiB to 3 decimals


@pytest.mark.engine
def test_plain_sglang_given_no_device_serves_on_cpu(bench):
    # Issue 18: with the plugin installed and no device given, plain SGLang (bf16-kv: no breccia
    # weights, no breccia flag) starts on a machine without a GPU: the CPU platform answers cpu.
    report, configs, _, _ = bench
    assert report["parameters"]["device"] == ""
    plain = configs["bf16-kv"]["engine"]["server_args"]
    assert plain["device"] == "cpu" and plain["quantization"] is None


@pytest.mark.engine
def test_report_has_machine_command_and_plots(bench):
    report, _, out, stdout = bench
    assert report["machine"]["sglang"] and report["machine"]["torch"] and report["machine"]["cpu_cores_usable"] >= 1
    assert "bench_multiturn.py" in report["command"] and "--configs" in report["command"]
    assert report["comparison"]["baseline"] == CONFIGS[0]
    for suffix in ("_perf.png", "_cache_hit.png"):
        png = out.with_name(out.stem + suffix)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000, png
    assert "hit rate" in stdout and all(name in stdout for name in CONFIGS)


# --- no engine needed ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)


def _conversations(tokenizer, seed):
    return worker.build_conversations(tokenizer, groups=2, prompts_per_group=2, system_prompt_len=80,
                                      question_len=20, turns=3, seed=seed)


def test_workload_is_deterministic_and_shares_one_system_prompt_per_group(tokenizer):
    conversations = _conversations(tokenizer, seed=0)
    assert conversations == _conversations(tokenizer, seed=0)
    assert conversations != _conversations(tokenizer, seed=1)
    assert [c["group"] for c in conversations] == [0, 0, 1, 1]
    assert conversations[0]["system"] == conversations[1]["system"] != conversations[2]["system"]
    assert len(tokenizer.encode(conversations[0]["system"], add_special_tokens=False)) == pytest.approx(80, abs=3)
    for question in conversations[0]["questions"]:
        assert len(tokenizer.encode(question, add_special_tokens=False)) == pytest.approx(20, abs=3)


def test_next_turn_ids_extend_the_chat_template_exactly(tokenizer):
    conversation = _conversations(tokenizer, seed=0)[0]
    answer = "The notes describe a harbour town."
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    ids = (worker.first_turn_ids(tokenizer, conversation) + answer_ids
           + worker.next_turn_suffix_ids(tokenizer, conversation["questions"][1]))
    messages = [{"role": "system", "content": conversation["system"]},
                {"role": "user", "content": conversation["questions"][0]},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": conversation["questions"][1]}]
    # Our token-level concatenation renders the same text as the template applied to the whole chat.
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(ids) == expected


def test_summary_of_hand_made_records():
    def record(turn, prompt, cached, ttft, latency, error=None):
        return {"turn": turn, "prompt_tokens": prompt, "cached_tokens": cached, "output_tokens": 4,
                "ttft_s": ttft, "latency_s": latency, "tpot_s": None if error else (latency - ttft) / 3,
                "num_retractions": 0,
                "error": error}

    records = [record(1, 100, 0, 0.1, 0.4), record(1, 100, 50, 0.3, 0.6), record(2, 200, 150, 0.2, 0.5),
               record(2, 10, 0, None, None, error="RuntimeError: boom")]
    run = {"records": records, "waves": [{"turn": 1, "start_s": 0.0, "end_s": 2.0, "peak_inflight_tokens": 208},
                                         {"turn": 2, "start_s": 2.0, "end_s": 3.0, "peak_inflight_tokens": 204}]}
    summary = bench_multiturn.summarize_run(run)
    turn1, turn2 = summary["per_turn"]
    assert turn1["cache_hit_rate"] == pytest.approx(0.25) and turn1["req_per_s"] == pytest.approx(1.0)
    assert turn1["ttft_ms"]["median"] == pytest.approx(200.0)
    assert turn2["requests"] == 1 and turn2["errors"] == 1 and turn2["cache_hit_rate"] == pytest.approx(0.75)
    overall = summary["overall"]
    assert overall["errors"] == 1 and overall["output_tokens"] == 12
    assert overall["output_tok_per_s"] == pytest.approx(4.0)  # 12 tokens over 3 s of waves
    assert overall["cache_hit_rate"] == pytest.approx(200 / 400)
    assert overall["peak_inflight_tokens"] == 208 and overall["engine_peak_kv_tokens"] is None


def test_engine_peaks_come_from_decode_lines_inside_each_wave():
    line = ("[2026-11-25 03:00:00] Decode batch, #running-req: {}, #token: {}, token usage: 0.79, "
            "cuda graph: False, gen throughput (token/s): 10.00, #queue-req: {}, ")
    log = "\n".join([line.format(9, 9999, 9),  # warm-up: before any wave
                     "[multiturn] wave 1 start", line.format(4, 1815, 0), line.format(2, 1900, 2),
                     "[multiturn] wave 1 end", line.format(8, 8888, 8),
                     "[multiturn] wave 2 start", line.format(1, 700, 0), "[multiturn] wave 2 end"])
    assert bench_multiturn.engine_load_by_wave(log) == {
        1: {"engine_peak_kv_tokens": 1900, "engine_peak_running_reqs": 4, "engine_peak_queued_reqs": 2},
        2: {"engine_peak_kv_tokens": 700, "engine_peak_running_reqs": 1, "engine_peak_queued_reqs": 0}}


def test_stream_chunks_accumulate_whether_they_carry_everything_or_only_what_is_new():
    # SGLang streams every output id so far by default; with --incremental-streaming-output
    # only the new ones. completion_tokens tells the two apart.
    cumulative = [{"output_ids": [5], "meta_info": {"completion_tokens": 1}},
                  {"output_ids": [5, 6, 7], "meta_info": {"completion_tokens": 3}}]
    incremental = [{"output_ids": [5], "meta_info": {"completion_tokens": 1}},
                   {"output_ids": [6, 7], "meta_info": {"completion_tokens": 3}}]
    for chunks in (cumulative, incremental):
        ids = []
        for chunk in chunks:
            ids = worker.output_ids_so_far(ids, chunk)
        assert ids == [5, 6, 7]
