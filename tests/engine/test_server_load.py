"""Load against one real ``launch_server --breccia-format`` on CPU with a KV pool far too small:
the soak (benchmarks/bench_soak.py at a test size) and SGLang's own benchmark client.

Both talk to the same server over loopback HTTP, the way a user would run them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import bench_soak
import pytest

from breccia_sglang.harness.server import SGLangServer

from ..helpers import BENCHMARKS

pytestmark = pytest.mark.engine

POOL_TOKENS = 512  # a turn-3 prompt is ~230 tokens and 4 clients run at once: the pool must evict
PAGE_SIZE = 16


@pytest.fixture(scope="module")
def server(demo_fp8, tmp_path_factory):
    log = tmp_path_factory.mktemp("load") / "server.log"
    # fp32: batched and single-request runs then differ only at rare near-ties (see bench_soak).
    with SGLangServer(demo_fp8, "--breccia-format", "--device", "cpu", "--dtype", "float32",
                      "--max-total-tokens", str(POOL_TOKENS), "--page-size", str(PAGE_SIZE), log_path=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def soak(server, tmp_path_factory):
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    cmd = [sys.executable, str(BENCHMARKS / "bench_soak.py"), "--url", server.url, "--server-log", str(server.log_path),
           "--requests", "24", "--clients", "4", "--groups", "2", "--system-prompt-len", "128",
           "--question-len", "16", "--output-len", "8", "--abort-fraction", "0.4", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text()) if out.exists() else None
    return done, report, out


def test_soak_passes_its_own_checks(soak):
    done, report, _ = soak
    assert done.returncode == 0, f"soak failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert report["passed"] is True
    assert "PASS" in done.stdout


def test_soak_really_pressed_the_pool_and_aborted_requests(soak):
    _, report, _ = soak
    s = report["summary"]
    assert s["requests"] == 24
    assert s["complete"] + s["aborted"] + s["error"] == 24
    # Both ways of cutting a request mid-decode happened.
    assert s["aborted_by_disconnect"] > 0 and s["aborted_by_abort_request"] > 0
    cut = [r for r in report["requests"] if r["outcome"] == "aborted"]
    # A disconnect ends the stream at the first chunk that reaches cut_after (a chunk may carry more
    # than one token when the client lags), before the last token; an /abort_request lands a decode
    # step or two later (SGLang then reports finish_reason "abort", even after the last token).
    assert all(r["cut_after"] <= len(r["output_ids"]) < 8 for r in cut if r["plan"] == "disconnect")
    assert all(r["cut_after"] <= len(r["output_ids"]) <= 8 for r in cut if r["plan"] == "abort_request")
    # The clients wrote the pool over more than once, and running requests filled most of it.
    assert s["pool_tokens"] == POOL_TOKENS and s["pool_turnovers"] > 1.5
    assert s["peak_token_usage"] > 0.6
    # Later turns still found their prefix under that pressure.
    later = [r for r in report["requests"] if r["turn"] > 1 and r["outcome"] == "complete"]
    assert later and any(r["cached_tokens"] >= PAGE_SIZE for r in later)


def test_nothing_leaked_and_the_server_stayed_healthy(soak, server):
    _, report, _ = soak
    s = report["summary"]
    assert s["error"] == 0, [r["error"] for r in report["requests"] if r["error"]]
    assert report["idle_load"]["num_used_tokens"] == 0 and s["pages_leaked"] == 0
    assert s["log_checked"] and report["log_problems"] == []
    assert s["healthy_after"] and server.get("/health_generate", timeout=120) is not None


def test_answers_under_pressure_equal_answers_alone(soak):
    _, report, _ = soak
    s = report["summary"]
    assert s["replayed"] == s["complete"] > 0
    assert s["different"] == 0, [v for v in report["verdicts"] if v["verdict"] == "different"]
    assert s["identical"] >= s["replayed"] - s["near_ties"]
    for verdict in report["verdicts"]:
        if verdict["verdict"] == "near-tie":
            assert 0 <= verdict["gap_nats"] <= bench_soak.NEAR_TIE_NATS


def test_soak_writes_a_plot(soak):
    _, _, out = soak
    png = out.with_suffix(".png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sglang_benchmark_client_generated_shared_prefix(server, demo_fp8, tmp_path):
    """``python -m sglang.benchmark.serving --dataset-name generated-shared-prefix`` against our server."""
    out = tmp_path / "gsp.jsonl"
    log_before = server.log_path.read_text(errors="replace")
    prompts, output_len = 6, 8
    cmd = [sys.executable, "-m", "sglang.benchmark.serving", "--backend", "sglang", "--host", "127.0.0.1",
           "--port", str(server.port), "--model", str(demo_fp8), "--tokenizer", str(demo_fp8),
           "--dataset-name", "generated-shared-prefix", "--gsp-num-groups", "2", "--gsp-prompts-per-group", "3",
           "--gsp-system-prompt-len", "128", "--gsp-question-len", "16", "--gsp-output-len", str(output_len),
           "--num-prompts", str(prompts), "--output-file", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["completed"] == prompts
    assert result["total_output_tokens"] == prompts * output_len
    assert result["server_info"]["quantization"] == "breccia"
    # The groups' shared system prompts were served from the radix cache, on the FP8 pages.
    new_lines = server.log_path.read_text(errors="replace")[len(log_before):]
    cached = [int(n) for n in re.findall(r"Prefill batch.*?#cached-token: (\d+)", new_lines)]
    assert cached and max(cached) >= 128 - PAGE_SIZE


@pytest.mark.parametrize("soak_ids, replay_ids, top, verdict", [
    ([1, 2, 3], [1, 2, 3], [], "identical"),
    # Position 1: the replay preferred 5 over 2 by 0.01 nats, the soak took 2 -> a near-tie.
    ([1, 2, 3], [1, 5, 6], [[[-0.1, 1]], [[-0.70, 5], [-0.71, 2]], [[-0.2, 6]]], "near-tie"),
    # The same divergence with a 2-nat gap is a real difference.
    ([1, 2, 3], [1, 5, 6], [[[-0.1, 1]], [[-0.1, 5], [-2.1, 2]], [[-0.2, 6]]], "different"),
    # The soak's token is not among the replay's top two: different, whatever the gap.
    ([1, 2, 3], [1, 5, 6], [[[-0.1, 1]], [[-0.70, 5], [-0.71, 9]], [[-0.2, 6]]], "different"),
])
def test_replay_comparison(soak_ids, replay_ids, top, verdict):
    result = bench_soak.compare_with_replay(soak_ids, replay_ids, top, bench_soak.NEAR_TIE_NATS)
    assert result["verdict"] == verdict
    if verdict != "identical":
        assert result["position"] == 1 and result["soak_token"] == 2 and result["replay_token"] == 5
