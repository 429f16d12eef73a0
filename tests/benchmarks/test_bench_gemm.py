"""benchmarks/bench_gemm.py --smoke: every variant runs on CPU under the Triton interpreter and is
checked against its fp32 reference (timings and the targets are GPU-only)."""

from __future__ import annotations


from ..helpers import run_benchmark


def test_smoke_run_checks_every_variant(tmp_path):
    out = tmp_path / "gemm.json"
    report, _ = run_benchmark("bench_gemm.py", "--smoke", out=out)
    variants = {r["variant"] for r in report["rows"]}
    assert variants == {"bf16", "emulated", "block-1x128", "block-1x64", "mxfp8"}  # the rest need a GPU
    assert {(r["shape"], r["m"]) for r in report["rows"]} == {(s, m) for s in ("qkv", "down") for m in (1, 7, 33)}
    for r in report["rows"]:
        assert "error" not in r, r
        # fp16 outputs (2^-11 relative) against fp32 references of the same maths.
        assert r["rel_err"] < 1e-3, r
        assert "time_us" not in r
    assert report["targets"] == [] and report["machine"]["torch"]
