"""benchmarks/bench_decode.py --smoke: every variant runs on CPU under the Triton
interpreter and is checked against fp32 attention on the K/V it reads (timings are GPU-only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import bench_decode as bench

from breccia_sglang.kernels.attention import decode_tiles
from breccia_sglang.kernels.attention.decode_tiles import CANDIDATES

from ..helpers import BENCHMARKS

BENCH = BENCHMARKS / "bench_decode.py"


def test_smoke_run_checks_every_variant(tmp_path):
    out = tmp_path / "decode.json"
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
    assert not any("error" in r for r in report["rows"])
    assert "TRITON_INTERPRET" in report["device"] and report["fp8_decode"].startswith("native")


def test_a_baseline_this_machine_cannot_run_is_reported_and_the_rest_still_run():
    # E.g. SGLang's FP8 decode on an A100: Triton has no fp8e4nv before sm_89.
    script = textwrap.dedent("""
        import argparse, json, torch
        import bench_decode as bench

        real_variants = bench.variants
        def variants(*args):
            found = real_variants(*args)
            def unsupported():
                raise ValueError("type fp8e4nv not supported in this architecture.\\nsecond line")
            found["sglang-fp8"] = (unsupported, *found["sglang-fp8"][1:])
            return found
        bench.variants = variants
        args = argparse.Namespace(kv_heads=2, group=2, head_dim=64, dtype=torch.float16, max_kv_splits=4,
                                  tune=False)
        rows = bench.run_case(2, 40, args, torch.device("cpu"), torch.Generator().manual_seed(0), None)
        bench.print_table(rows)
        print(json.dumps(rows))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(BENCHMARKS)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(done.stdout.strip().splitlines()[-1])}
    assert rows["sglang-fp8"]["error"] == "ValueError: type fp8e4nv not supported in this architecture."
    assert "rel_l2" not in rows["sglang-fp8"]
    assert rows["breccia-fp8"]["rel_l2"] < 2e-3 and rows["sglang-bf16"]["rel_l2"] < 2e-3
    assert "sglang-fp8                 2      40   failed: ValueError" in done.stdout


def test_tune_runs_every_candidate_tile_config_against_the_reference(tmp_path):
    out = tmp_path / "decode.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--tune", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert {f"breccia-fp8 {t.name}" for t in CANDIDATES} <= set(rows)
    # Same fp16 rounding as the default tiles; the V scales' tile maximum moves with block_n.
    assert all(rows[f"breccia-fp8 {t.name}"]["rel_l2"] < 2e-3 for t in CANDIDATES)
    assert "tiles" not in report  # nothing timed on CPU, so nothing to choose


def test_the_tuned_tiles_are_the_least_summed_slowdown_and_load_back(tmp_path):
    a, b, c = CANDIDATES[:3]

    def timed(tiles, batch, us):
        return {"variant": f"breccia-fp8 {tiles.name}", "batch": batch, "context": 4096, "time_us": us}

    others = [t for t in CANDIDATES if t not in (a, b, c)]
    # a: fastest at batch 32, far slower at 64; b: close on both -> b (1.1 + 1.0 < 1.0 + 2.0).
    rows = [timed(a, 32, 100.0), timed(b, 32, 110.0), timed(c, 32, 300.0),
            timed(a, 64, 400.0), timed(b, 64, 200.0), timed(c, 64, 300.0)]
    rows += [timed(t, batch, 1000.0) for t in others for batch in (32, 64)]
    rows += [timed(c, 16, 1.0)]  # a case where one candidate alone was timed (a run cut short): not counted
    rows += [{"variant": "sglang-bf16", "batch": 32, "context": 4096, "time_us": 1.0}]
    tiles, sums = bench.best_tiles(rows)
    assert tiles == b
    assert sums[a.name] == pytest.approx(3.0) and sums[b.name] == pytest.approx(2.1)
    assert bench.best_tiles(rows[-2:]) is None

    out = tmp_path / "decode.json"
    bench.write_report(out, {"device": "Some GPU"}, rows, 0.0, head_dim=128)
    assert decode_tiles.load_tiles(out) == {128: b}  # the report is itself a tuned file
