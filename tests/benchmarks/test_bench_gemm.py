"""benchmarks/bench_gemm.py --smoke: every variant runs on CPU under the Triton interpreter and is
checked against its fp32 reference (timings and the targets are GPU-only); and the target lines
a GPU run prints, from rows shaped like its own."""

from __future__ import annotations

import bench_gemm

from ..helpers import run_benchmark


def test_smoke_run_checks_every_variant(tmp_path):
    out = tmp_path / "gemm.json"
    report, _ = run_benchmark("bench_gemm.py", "--smoke", out=out)
    variants = {r["variant"] for r in report["rows"]}
    assert variants == {"bf16", "emulated", "block-1x128", "block-1x64", "mxfp8",  # the rest need a GPU
                        "int4-g128", "int4-g128-asym", "nvfp4", "int4-emulated", "int4-g128-marlin",
                        "block-1x128-marlin", "w8a16-per-tensor", "w8a16-1x128", "w8a16-1x64", "w8a16-mxfp8",
                        "dequant-per-tensor", "dequant-1x128", "dequant-1x64", "dequant-mxfp8",
                        "dequant-int4-g128", "dequant-nvfp4", "int4-g128-elementwise", "nvfp4-elementwise"}
    assert {(r["shape"], r["m"]) for r in report["rows"]} == {(s, m) for s in ("qkv", "down") for m in (1, 7, 33)}
    elementwise = {(r["variant"], r["m"]) for r in report["rows"] if r["variant"].endswith("-elementwise")}
    assert {m for _, m in elementwise} == {1, 7}  # decode sizes only: M <= 32
    for r in report["rows"]:
        if r["variant"].endswith("-marlin"):  # SGLang's Marlin is JIT CUDA: a row that says why not
            assert r["error"] == "needs a CUDA GPU and SGLang's CUDA kernels", r
            continue
        assert "error" not in r, r
        # fp16 outputs (2^-11 relative) against fp32 references of the same maths.
        assert r["rel_err"] < 1e-3, r
        assert "time_us" not in r
    assert report["targets"] == [] and report["skipped"] == [] and report["machine"]["torch"]


def test_every_shape_runs_at_one_m_before_any_runs_at_the_next():
    order = bench_gemm.case_order({"qkv": (6144, 4096), "o": (4096, 4096)}, [1, 8, 2048])
    assert order == [("qkv", 1), ("o", 1), ("qkv", 8), ("o", 8), ("qkv", 2048), ("o", 2048)]


def test_a_spent_time_budget_starts_no_case_and_says_which_did_not_run(tmp_path):
    out = tmp_path / "gemm.json"
    report, printed = run_benchmark("bench_gemm.py", "--smoke", "--budget-s", "0", out=out)
    assert report["rows"] == []
    assert report["skipped"] == [f"{s} M={m}" for m in (1, 7, 33) for s in ("qkv", "down")]
    assert report["targets"] == [f"INFO time budget of 0 s spent: not run: {', '.join(report['skipped'])}"]
    assert report["targets"][0] in printed


def timed(variant: str, m: int, us: float, bf16_us: float) -> dict:
    return {"variant": variant, "shape": "qkv", "m": m, "time_us": us, "speedup_vs_bf16": bf16_us / us}


def test_the_targets_read_each_1x128_kernel_and_name_the_fastest():
    rows = [timed("bf16", m, 10.0, 10.0) for m in (1, 2048)]
    rows += [timed("sglang-128x128", 1, 5.0, 10.0), timed("sglang-128x128", 2048, 6.0, 10.0)]
    rows += [timed("block-1x128", 1, 5.0, 10.0), timed("block-1x128", 2048, 8.0, 10.0)]  # 2.0x, 1.25x
    rows += [timed("sm90-torch", 1, 5.2, 10.0), timed("sm90-torch", 2048, 6.2, 10.0)]
    lines = bench_gemm.target_checks(rows)
    assert "PASS block-1x128 >= 1.6x BF16 at M <= 16: min 2.00x" in lines
    assert "FAIL block-1x128 >= 1.4x BF16 at M >= 1024: min 1.25x" in lines
    assert "FAIL block-1x128 within 10% of SGLang's 128x128: worst 1.33x its time" in lines
    assert "PASS sm90-torch within 10% of SGLang's 128x128: worst 1.04x its time" in lines
    assert "PASS no FP8 recipe slower than BF16 on its default kernel: none" in lines
    assert lines[-1] == "INFO fastest 1x128 kernel, summed over every shape and M: sm90-torch 11.4 us (block-1x128 13.0 us)"


def test_a_baseline_slower_than_bf16_fails_no_recipe():
    # SGLang's own 128x128 kernel is a baseline (seen on an H200: 0.48x BF16 at M = 1); a recipe's
    # kernel slower than BF16 is what the target counts.
    rows = [timed("bf16", 1, 10.0, 10.0), timed("sglang-128x128", 1, 20.0, 10.0), timed("mxfp8", 1, 8.0, 10.0)]
    assert "PASS no FP8 recipe slower than BF16 on its default kernel: none" in bench_gemm.target_checks(rows)
    rows.append(timed("block-1x64", 1, 12.5, 10.0))
    assert "FAIL no FP8 recipe slower than BF16 on its default kernel: block-1x64 qkv M=1 0.80x" in bench_gemm.target_checks(rows)


def test_the_4_bit_targets_read_each_4_bit_kernel():
    rows = [timed("bf16", m, 10.0, 10.0) for m in (1, 128, 2048)]
    rows += [timed("int4-g128", 1, 3.0, 10.0), timed("int4-g128", 128, 9.0, 10.0), timed("int4-g128", 2048, 20.0, 10.0)]
    rows += [timed("nvfp4", 1, 5.0, 10.0), timed("nvfp4", 128, 12.5, 10.0)]
    lines = bench_gemm.target_checks(rows)
    assert "PASS int4-g128 >= 2.5x BF16 at M <= 16: min 3.33x" in lines
    assert "PASS int4-g128 >= 1.0x BF16 up to M = 128: min 1.11x" in lines  # M = 2048 is not held to it
    assert "FAIL nvfp4 >= 2.5x BF16 at M <= 16: min 2.00x" in lines
    assert "FAIL nvfp4 >= 1.0x BF16 up to M = 128: min 0.80x" in lines
    assert "PASS no FP8 recipe slower than BF16 on its default kernel: none" in lines


def test_the_ptx_decode_is_compared_with_the_elementwise_one_where_both_ran():
    rows = [timed("bf16", m, 10.0, 10.0) for m in (1, 8)]
    rows += [timed("int4-g128", 1, 4.0, 10.0), timed("int4-g128-elementwise", 1, 10.0, 10.0)]
    rows += [timed("int4-g128", 8, 5.0, 10.0), timed("int4-g128-elementwise", 8, 7.5, 10.0)]
    rows += [timed("nvfp4", 1, 20.0, 10.0)]  # no elementwise row: no line
    rows += [timed("nvfp4-elementwise", 8, 30.0, 10.0)]
    lines = bench_gemm.target_checks(rows)
    assert ("INFO int4-g128: the PTX decode against Triton's elementwise one, summed over shapes: "
            "M=1 2.50x faster, M=8 1.50x faster") in lines
    assert not any(line.startswith("INFO nvfp4:") for line in lines)
    # neither is a default FP8 kernel: not in the "slower than BF16" line
    assert "PASS no FP8 recipe slower than BF16 on its default kernel: none" in lines


def test_each_recipe_is_also_judged_at_its_fastest_kernel_per_m():
    # W8A16 rows are alternatives, not what sm_89+ serves by default: they do not fail the
    # default-kernel line, and they rescue a recipe in the by-M line where they are faster.
    rows = [timed("bf16", m, 10.0, 10.0) for m in (1, 2048)]
    rows += [timed("block-1x64", 1, 12.5, 10.0), timed("w8a16-1x64", 1, 6.0, 10.0)]
    rows += [timed("block-1x64", 2048, 8.0, 10.0), timed("w8a16-1x64", 2048, 11.0, 10.0)]
    rows += [timed("mxfp8", 1, 20.0, 10.0), timed("w8a16-mxfp8", 1, 12.0, 10.0)]
    lines = bench_gemm.target_checks(rows)
    assert "FAIL no FP8 recipe slower than BF16 on its default kernel: block-1x64 qkv M=1 0.80x, " \
           "mxfp8 qkv M=1 0.50x" in lines
    assert "FAIL no FP8 recipe slower than BF16 at its fastest kernel per M: mxfp8 qkv M=1 0.83x (w8a16-mxfp8)" in lines
    assert "INFO 1x64: fastest kernel by M (over shapes): M=1 w8a16-1x64, M=2048 block-1x64" in lines


def test_the_suggested_w8a16_bound_is_where_w8a16_stops_beating_the_w8a8_kernel_that_ranks_first():
    def on(shape, variant, m, us):
        return {"variant": variant, "shape": shape, "m": m, "time_us": us, "speedup_vs_bf16": 10.0 / us}

    rows = [on(shape, "bf16", m, 10.0) for shape in ("qkv", "down") for m in (1, 8, 32)]
    # per-tensor: W8A16 wins at M = 1 and 8 summed over both shapes (qkv alone loses at 8), then loses.
    for m, w8a8, w8a16 in ((1, 10.0, 6.0), (8, 10.0, 9.0), (32, 10.0, 11.0)):
        rows += [on("qkv", "per-tensor-fp8", m, w8a8), on("down", "per-tensor-fp8", m, w8a8)]
        rows += [on("qkv", "w8a16-per-tensor", m, w8a16 + (2.0 if m == 8 else 0.0)),
                 on("down", "w8a16-per-tensor", m, w8a16 - 1.5)]
    # 1x128: judged against the faster W8A8 kernel (sm90-torch), not the Triton one; loses at M = 8.
    for m, triton_us, torch_us, w8a16 in ((1, 8.0, 7.0, 6.0), (8, 8.0, 7.5, 7.9), (32, 8.0, 7.0, 6.0)):
        rows += [on("qkv", "block-1x128", m, triton_us), on("qkv", "sm90-torch", m, torch_us),
                 on("qkv", "w8a16-1x128", m, w8a16)]
    bound, per_recipe = bench_gemm.suggested_w8a16_bound(rows)
    # M = 32 wins again for 1x128, but 8 lost: the bound stops at the first loss.
    assert per_recipe == {"per-tensor": 8, "1x128": 1} and bound == 1
    assert any(line.startswith('INFO w8a16_up_to_m suggested: 1 (per recipe: per-tensor 8, 1x128 1)')
               for line in bench_gemm.target_checks(rows))
    # No W8A16 row faster at M = 1: nothing to route.
    slow = [r | {"time_us": 99.0} if r["variant"].startswith("w8a16-") else r for r in rows]
    assert bench_gemm.suggested_w8a16_bound(slow) == (0, {"per-tensor": 0, "1x128": 0})


def test_the_dequantize_bounds_start_where_the_route_wins_at_every_larger_m():
    # mxfp8: the route loses at 128, wins from 512 on. 1x64: it wins at 512, loses at 2048 (no
    # bound: it must win at every larger M). per-tensor: never measured against a W8A8 row, so
    # against W8A16 (a GPU without FP8 tensor cores), which it beats from 128. nvfp4: the 4-bit
    # route against triton-w4a16, winning from 512. The route is an alternative: it never fails
    # the default-kernel line, and it counts in the by-M one.
    rows = [timed("bf16", m, 10.0, 10.0) for m in (128, 512, 2048)]
    rows += [timed("mxfp8", m, 30.0, 10.0) for m in (128, 512, 2048)]
    rows += [timed("dequant-mxfp8", 128, 31.0, 10.0), timed("dequant-mxfp8", 512, 12.0, 10.0),
             timed("dequant-mxfp8", 2048, 11.0, 10.0)]
    rows += [timed("block-1x64", m, 12.0, 10.0) for m in (128, 512, 2048)]
    rows += [timed("dequant-1x64", 512, 11.0, 10.0), timed("dequant-1x64", 2048, 13.0, 10.0)]
    rows += [timed("w8a16-per-tensor", 128, 20.0, 10.0), timed("dequant-per-tensor", 128, 14.0, 10.0)]
    rows += [timed("nvfp4", m, 25.0, 10.0) for m in (128, 512)]
    rows += [timed("dequant-nvfp4", 128, 26.0, 10.0), timed("dequant-nvfp4", 512, 12.0, 10.0)]
    assert bench_gemm.suggested_dequantize_bounds(rows) == {"per-tensor": 128, "64": 0, "32": 512, "nvfp4": 512}
    lines = bench_gemm.target_checks(rows)
    assert 'INFO dequantize_from_m suggested: {"per-tensor": 128, "64": 0, "32": 512, "nvfp4": 512}' in " ".join(lines)
    assert not any("dequant-" in line for line in lines if "on its default kernel" in line)
    assert any(line.startswith("INFO mxfp8: fastest kernel by M") and "M=2048 dequant-mxfp8" in line for line in lines)
