"""``benchmarks/bench_kv_capacity.py`` at a small pool on the demo model: the engine-reported
capacities must add up and breccia's must sit at the 2D/(D+4) bound."""

from __future__ import annotations


import pytest

from ..helpers import run_benchmark

TOKENS = 16384  # SGLang rounds the pool's GiB to 3 digits: big enough that this costs < 0.3%

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def report(demo_fp8, tmp_path_factory):
    out = tmp_path_factory.mktemp("capacity") / "kv_capacity.json"
    report, _ = run_benchmark("bench_kv_capacity.py", "--tokens", TOKENS, "--model", demo_fp8, out=out)
    return report, out


def test_every_configuration_reports_a_pool(report):
    data, _ = report
    rows = {r["config"]: r for r in data["rows"]}
    assert list(rows) == ["SGLang BF16 KV", "SGLang FP8 KV (per-tensor, scale 1.0)", "breccia FP8 KV (per token, head)"]
    for row in rows.values():
        assert row["max_total_num_tokens"] > 0 and row["kvcache_gib"] > 0
        assert row["tokens_per_gib"] == pytest.approx(row["max_total_num_tokens"] / row["kvcache_gib"])
    assert data["parameters"]["tokens"] == TOKENS and data["machine"] and data["date"]


def test_gains_are_at_the_bound(report):
    data, _ = report
    rows = {r["config"]: r for r in data["rows"]}
    head_dim = data["head_dim"]
    assert head_dim == 64 and data["bound_2d_over_d_plus_4"] == pytest.approx(2 * 64 / 68)
    assert rows["SGLang BF16 KV"]["gain_vs_bf16"] == 1.0
    # 1%: the GiB figures are rounded to 3 digits (see TOKENS), nothing else is approximate.
    assert rows["SGLang FP8 KV (per-tensor, scale 1.0)"]["gain_vs_bf16"] == pytest.approx(2.0, rel=0.01)
    assert rows["breccia FP8 KV (per token, head)"]["gain_vs_bf16"] == pytest.approx(data["bound_2d_over_d_plus_4"],
                                                                                     rel=0.01)


def test_the_plot_is_written(report):
    _, out = report
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
