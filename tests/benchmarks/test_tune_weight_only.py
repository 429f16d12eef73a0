"""benchmarks/tune_weight_only.py: the smoke run checks each kind's candidates (split and not)
against the kernels' fp32 references under the interpreter; the precompile workers run the
production launchers with the candidate planted; and the choice per tuned table and M is the
candidate of least summed slowdown over the table's kinds and shapes, reported against BF16 and
written as a table the kernels read back."""

from __future__ import annotations

import json
import subprocess
import sys

import tune_weight_only as tune

from breccia_sglang.kernels.gemm import tuned_configs
from breccia_sglang.kernels.gemm.tiling import TileConfig

from ..helpers import BENCHMARKS


def test_smoke_run_checks_every_kind(tmp_path):
    out = tmp_path / "tune.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "tune_weight_only.py"), "--smoke", "--kinds", *tune.KINDS,
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["kind"] for r in rows} == set(tune.KINDS) and {r["m"] for r in rows} == {1, 7}
    assert {r["config"] for r in rows} == {tune.name_of(c) for c in tune.candidates(smoke=True)}
    for r in rows:
        assert "error" not in r, r
        # fp16 weights and outputs (2^-11 relative) against fp32 sums of the same products.
        assert r["rel_err"] < 1e-3, r


def test_the_precompile_workers_run_the_production_launchers(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    jobs = [("w8a16-g32", TileConfig(16, 32, 64, 1, 1, 1, programs_per_sm=4), 1, 48),
            ("w4a16-nvfp4", TileConfig(16, 32, 64, 1, 1, 1, programs_per_sm=2), 16, 40)]
    assert tune.precompile(jobs, workers=2) == {job: None for job in jobs}


def test_the_choice_is_the_least_summed_slowdown_against_bf16_and_its_table_loads_back(tmp_path):
    a, b, c = (TileConfig(16, n, 128, 1, 4, 3, programs_per_sm=4) for n in (32, 64, 128))

    def row(shape, config, us, kind="w8a16-g128", m=1):
        return {"shape": shape, "m": m, "kind": kind, "config": tune.name_of(config), "us": us, "tile": config}

    rows = [{"shape": s, "m": m, "kind": "bf16", "config": "torch.matmul", "us": 20.0}
            for s in ("qkv", "down") for m in (1, 16)]
    # a: fastest on qkv, far slower on down; b: close on both -> b (1.1 + 1.0 < 1.0 + 2.0)
    rows += [row("qkv", a, 10.0), row("down", a, 20.0), row("qkv", b, 11.0), row("down", b, 10.0)]
    rows += [row("qkv", c, 5.0)]  # measured on one shape only: not a candidate
    # Two kinds share the W8A16 table: at M = 16 c wins summed over both (1.25 + 1 against 1 + 2).
    rows += [row("qkv", c, 10.0, m=16), row("qkv", c, 10.0, "w8a16-per-row", m=16),
             row("qkv", a, 8.0, m=16), row("qkv", a, 20.0, "w8a16-per-row", m=16)]
    tables, lines = tune.best(rows)
    assert lines == [f"w8a16 M=1: {tune.name_of(b)} (mean slowdown 1.050): w8a16-g128 down 10.0 us 2.00x bf16; "
                     "w8a16-g128 qkv 11.0 us 1.82x bf16",
                     f"w8a16 M=16: {tune.name_of(c)} (mean slowdown 1.125): w8a16-g128 qkv 10.0 us 2.00x bf16; "
                     "w8a16-per-row qkv 10.0 us 2.00x bf16"]
    assert tables == {"w8a16": [(1, b), (16, c)]}
    path = tmp_path / "weight_only_Some_GPU.json"
    tuned_configs.write_tables(path, tables, device="Some GPU", capability=90)
    assert tuned_configs.load_tables(path) == tables
