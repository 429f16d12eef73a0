"""``benchmarks/bench_quantize.py`` on a small awkward weight: every variant it times (breccia's
whole cast, the chunked cast here, and on two worker processes) is checked bit for bit against
breccia.cast by the benchmark itself, which fails the run when one differs."""

from __future__ import annotations

from ..helpers import run_benchmark


def test_every_timed_cast_is_breccias_bit_for_bit(tmp_path):
    # 50 rows of K = 384 (3 x 128, for INT4's default groups): 2^13-element chunks hold 21 rows,
    # so MXFP8 takes three chunks, the last one short, and two workers share them. INT4 casts in
    # 2^18-element chunks: one chunk here.
    report, stdout = run_benchmark("bench_quantize.py", "--rows", "50", "--k", "384", "--recipes", "mxfp8", "int4",
                                   "--jobs", "2", out=tmp_path / "quantize.json")
    assert report["failures"] == []
    rows = {row["recipe"]: row for row in report["rows"]}
    assert set(rows) == {"mxfp8", "int4"}
    assert set(rows["mxfp8"]["variants"]) == {"chunked", "chunked, 2 workers"}
    assert set(rows["int4"]["variants"]) == {"chunked"}  # no workers: INT4 searches no codes
    assert all(v["s"] > 0 and v["speedup"] > 0 for row in rows.values() for v in row["variants"].values())
    assert "OK every variant's codes and scales are breccia.cast's, bit for bit" in stdout
    assert report["parameters"]["rows"] == 50 and report["machine"]["cpu_cores_usable"] >= 1
