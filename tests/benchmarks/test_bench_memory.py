"""``benchmarks/bench_memory.py`` on the demo model with INT4 (group 64, the largest that divides
its K = 576) and NVFP4: the loaded layers hold the packed bytes, not one byte per code.

The resident figure is what the engine's breccia layers hold, summed over their parameters in
the engine process; the ideal is computed from the checkpoint's shapes (N * K / 2 + the stored
scale and zero-point bytes). Before packing, resident was N * K + those: about 1.9x the ideal.
"""

from __future__ import annotations

import pytest

from ..helpers import run_benchmark

pytestmark = pytest.mark.engine


def test_4bit_layers_hold_half_a_byte_per_weight_plus_their_scales(demo_model, tmp_path):
    report, stdout = run_benchmark("bench_memory.py", "--recipes", "int4-g64", "nvfp4", out=tmp_path / "memory.json")
    rows = {r["recipe"]: r for r in report["rows"]}
    assert set(rows) == {"int4-g64", "nvfp4"}
    for recipe, row in rows.items():
        assert row["layers"] == 30 * 4, row  # qkv, o, gate_up, down in each of 30 layers
        assert abs(row["resident_over_ideal"] - 1) <= 0.01, row
        # 4 bits per weight plus scales: int4-g64 fp16 scales 1/32, nvfp4 E4M3 scales 1/16 of a
        # byte per weight, so 0.27 and 0.28 of BF16; one byte per code would be over 0.5.
        assert row["ratio_to_bf16"] < 0.3, row
    assert "OK every recipe's resident bytes are within 1% of the packed ideal" in stdout
