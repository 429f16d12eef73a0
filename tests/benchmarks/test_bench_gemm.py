"""benchmarks/bench_gemm.py --smoke: every variant runs on CPU under the Triton interpreter and is
checked against its fp32 reference (timings and the targets are GPU-only)."""

from __future__ import annotations

import json
import subprocess
import sys

from ..helpers import BENCHMARKS


def test_smoke_run_checks_every_variant(tmp_path):
    out = tmp_path / "gemm.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_gemm.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    variants = {r["variant"] for r in report["rows"]}
    assert variants == {"bf16", "emulated", "block-1x128", "block-1x64", "mxfp8"}  # the rest need a GPU
    assert {(r["shape"], r["m"]) for r in report["rows"]} == {(s, m) for s in ("qkv", "down") for m in (1, 7, 33)}
    for r in report["rows"]:
        assert "error" not in r, r
        # fp16 outputs (2^-11 relative) against fp32 references of the same maths.
        assert r["rel_err"] < 1e-3, r
        assert "time_us" not in r
    assert report["targets"] == [] and report["machine"]["torch"]
