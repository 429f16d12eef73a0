"""benchmarks/bench_paged_attention.py --smoke: every variant runs on CPU under the Triton
interpreter and is checked against fp32 attention on the K/V it reads (timings are GPU-only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_paged_attention.py"


def test_smoke_run_checks_every_variant(tmp_path):
    out = tmp_path / "paged_attention.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"breccia-fp8", "sglang-bf16", "sglang-fp8"}
    # fp16 queries: probabilities and outputs rounded to fp16 (2^-11 relative) -> ~1e-3 at most.
    assert rows["breccia-fp8"]["rel_l2"] < 2e-3
    assert rows["sglang-bf16"]["rel_l2"] < 2e-3
    assert all("time_us" not in r for r in report["rows"])  # no timings without a GPU
    assert "TRITON_INTERPRET" in report["device"]
