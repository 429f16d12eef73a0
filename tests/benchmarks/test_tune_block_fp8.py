"""benchmarks/tune_block_fp8.py: the smoke run checks a spread of candidate configs (SGLang's
plain kernel and its Hopper variant with swap-AB and split-K) against the W8A8 reference under
the interpreter; the parallel precompile path runs in spawned processes; and the table a GPU run
writes picks, per M, the config of least summed slowdown and reads back as the kernel reads it."""

from __future__ import annotations

import json
import subprocess
import sys

import tune_block_fp8 as tune

from breccia_sglang.integration.gemm import block_fp8_tiles as tiles

from ..helpers import BENCHMARKS


def test_smoke_run_checks_plain_swapped_and_split_configs(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "tune_block_fp8.py"), "--smoke", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "tune_block_fp8.json").read_text())["rows"]
    assert {r["block"] for r in rows} == {32, 64, 128} and {r["m"] for r in rows} == {1, 7, 33}
    names = {r["config"] for r in rows}
    assert any("swap" in n for n in names) and any("split" in n for n in names) and any(
        "swap" not in n and "split" not in n for n in names)
    for r in rows:
        assert "error" not in r, r
        # fp16 outputs (2^-11 relative) of the same fp32 products the reference sums.
        assert r["rel_err"] < 1e-3, r


def test_the_precompile_workers_run_the_production_launcher(monkeypatch):
    # Under the interpreter nothing compiles, but the spawned workers take the same path a GPU
    # run does (SGLang's module imported first, the config planted, the kernel launched).
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    jobs = [(tiles.TileConfig(16, 32, None, 1, 4, 3), 64, 1, 48),
            (tiles.TileConfig(16, 32, None, 1, 4, 3, swap_ab=True, split_k=2), 32, 8, 48)]
    assert tune.precompile(jobs, workers=2) == {job: None for job in jobs}


def rows_for(m: int, times: dict[str, dict[str, float]]) -> list[dict]:
    configs = {c.name: c for _, c in tune.candidates()}
    out = [{"shape": shape, "m": m, "config": "bf16 torch.matmul", "ms": 0.02} for shape in ("qkv", "down")]
    for name, per_shape in times.items():
        out += [{"shape": shape, "block": 128, "m": m, "config": name, "tile": configs[name], "ms": ms}
                for shape, ms in per_shape.items()]
    return out


def test_the_table_takes_the_least_summed_slowdown_per_m_and_reads_back(tmp_path):
    small = [c for top, c in tune.candidates() if top == 16]
    large = [c for top, c in tune.candidates() if top == 1 << 62]
    # At M = 1 config a is fastest on qkv, b on down; b loses less overall (1.0 + 1.1 < 1.5 + 1.0).
    a, b = small[0].name, small[-1].name
    rows = rows_for(1, {a: {"qkv": 0.010, "down": 0.030}, b: {"qkv": 0.011, "down": 0.020}})
    rows += rows_for(2048, {large[0].name: {"qkv": 0.5, "down": 0.9}, large[1].name: {"qkv": 0.4, "down": 1.0}})
    tables, lines = tune.best_tables(rows, [1, 2048], [128])
    assert tables == {128: [(2047, small[-1]), (1 << 62, large[1])]}
    assert lines[0].startswith(f"1x128 M=    1 {b}") and "down 20.0 us 1.00x bf16" in lines[0]
    path = tmp_path / "table.json"
    tiles.write_tables(path, tables, device="test")
    assert tiles.load_tables(path) == tables
