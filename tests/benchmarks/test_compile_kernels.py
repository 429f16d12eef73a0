"""benchmarks/compile_kernels.py: every Triton kernel, with the arguments its launcher passes on
a GPU, compiled to a cubin for sm_80 (A100), sm_89 (L4) and sm_90 (H100/H200) on this CPU-only
machine, with SGLang's decode kernel beside it. What the interpreter cannot show: that the
kernels lower for real GPUs, fit their shared memory, and take the right FP8 decode on each."""

from __future__ import annotations

import json
import os

import pytest

from ..helpers import BENCHMARKS, run_benchmark

SCRIPT = BENCHMARKS / "compile_kernels.py"
ARCHS, DTYPES, HEAD_DIMS = (80, 89, 90), ("bfloat16", "float16", "float32"), (64, 128)
OURS = {"breccia write", "breccia decode split", "breccia decode merge", "breccia extend"}
READS_FP8 = {"breccia decode split", "breccia extend"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "compile_kernels.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    return run_benchmark(SCRIPT.name, out=out, timeout=1200, env=env)


def rows_of(report, kernel: str) -> list[dict]:
    return [r for r in report[0]["rows"] if r["kernel"] == kernel]


def test_every_kernel_was_compiled_for_every_target(report):
    rows = report[0]["rows"]
    for arch in ARCHS:
        for dtype in DTYPES:
            for head_dim in HEAD_DIMS:
                kernels = {r["kernel"] for r in rows
                           if (r["arch"], r["dtype"], r["head_dim"]) == (arch, dtype, head_dim)}
                assert OURS <= kernels, (arch, dtype, head_dim)
                assert sum(k.startswith("sglang decode") for k in kernels) == 4  # split + merge, two KV dtypes


def test_our_kernels_compile_everywhere_and_fit_shared_memory(report):
    ours = [r for r in report[0]["rows"] if r["kernel"] in OURS]
    assert len(ours) == len(OURS) * len(ARCHS) * len(DTYPES) * len(HEAD_DIMS)
    for r in ours:
        assert "error" not in r, r
        assert r["registers"] > 0 and r["shared_bytes"] <= r["shared_limit"], r


def test_each_gpu_takes_the_fp8_decode_it_can_compile(report):
    for kernel in READS_FP8:
        for r in rows_of(report, kernel):
            assert r["native_fp8"] is (r["arch"] >= 89), r


def test_sglang_fp8_decode_does_not_compile_before_sm_89(report):
    # Why the integer decode exists: Triton has no fp8e4nv on sm_80, and SGLang's kernel
    # reads its FP8 cache as that type. On sm_89+ it compiles.
    split = rows_of(report, "sglang decode split (fp8 KV)")
    assert split and all(("error" in r) is (r["arch"] < 89) for r in split)
    assert all("fp8e4nv not supported" in r["error"] for r in split if r["arch"] < 89)
    assert "FAILS: CompilationError" in report[1]


def test_fp32_queries_take_tiles_that_do_not_spill(report):
    # The ieee fp32 dot keeps its tiles in registers; with 64-wide tiles the kernels spilled
    # 3-12 KB per thread (head_dim 128), with the fp32 tiles (32 wide, 8 warps) a few hundred bytes.
    for r in (r for r in report[0]["rows"] if r["kernel"] in READS_FP8):
        assert r["spill_bytes"] < 1024, r
        assert r["num_warps"] == (8 if r["dtype"] == "float32" else 4), r


def test_the_decode_loop_converts_v_where_it_was_loaded(report):
    # paged_tile.converted_in_place: each thread converts 16 contiguous V codes of a row, instead
    # of gathering two keys' codes a byte at a time in the dot's operand layout. The bf16
    # head_dim 128 decode loop issued 866 / 719 / 722 instructions on sm_80 / 89 / 90 before,
    # 714 / 580 / 594 since; extend at head_dim 64 on sm_80 / 89 1569 / 1259 -> 1213 / 1045.
    def loop(kernel, arch, head_dim):
        return next(r["loop_instructions"] for r in rows_of(report, kernel)
                    if (r["arch"], r["dtype"], r["head_dim"]) == (arch, "bfloat16", head_dim))

    assert loop("breccia decode split", 80, 128) < 780
    assert loop("breccia decode split", 89, 128) < 650 and loop("breccia decode split", 90, 128) < 650
    assert loop("breccia extend", 80, 64) < 1350 and loop("breccia extend", 89, 64) < 1150


def test_every_decode_tile_candidate_compiles_everywhere_without_spilling(report):
    # bench_decode --tune may ship any of them for a GPU model: each must lower for every target
    # and head_dim without spilling, and they must differ where it matters (registers per thread,
    # which bound how many programs share an SM, against instructions issued per key).
    from breccia_sglang.kernels.attention.decode_tiles import CANDIDATES, DEFAULT

    rows = [r for r in report[0]["rows"] if r["kernel"].endswith("(tune candidate)")]
    assert len(rows) == (len(CANDIDATES) - 1) * len(ARCHS) * len(HEAD_DIMS)
    for r in rows:
        assert "error" not in r, r
        assert r["spill_bytes"] == 0 and r["shared_bytes"] <= r["shared_limit"], r
    for tiles in set(CANDIDATES) - {DEFAULT}:
        row = next(r for r in rows if tiles.name in r["kernel"])
        assert (row["num_warps"], row["num_stages"]) == (tiles.num_warps, tiles.num_stages), row
    sm90 = {r["kernel"].split()[3]: r["registers"] for r in rows if (r["arch"], r["head_dim"]) == (90, 128)}
    assert len(set(sm90.values())) >= 4, sm90
    # A register cap reaches ptxas: at head_dim 128 the capped default tiles fit more programs on
    # an SM than the default (134-146 registers, 3 programs) on every target, still unspilled.
    for capped in (t for t in CANDIDATES if t.max_registers):
        for r in (r for r in rows if f" {capped.name} " in r["kernel"]):
            assert r["registers"] <= capped.max_registers, r
            if r["head_dim"] == 128 and capped.block_n == DEFAULT.block_n:
                default = next(d for d in rows_of(report, "breccia decode split")
                               if (d["arch"], d["head_dim"], d["dtype"]) == (r["arch"], 128, "bfloat16"))
                assert r["blocks_per_sm_by_registers"] > default["blocks_per_sm_by_registers"], (r, default)


def test_the_block_fp8_gemm_compiles_with_every_config_breccia_launches_on_fp8_gpus(report):
    # The default table on every FP8 GPU; a table tuned on a GPU model (tuned/, e.g. the H200's)
    # on that model's compute capability only, its split-K configs with SGLang's reduce kernel.
    from breccia_sglang.integration.gemm import block_fp8_tiles as tiles
    from breccia_sglang.integration.gemm import triton_block_fp8 as tbf

    gemm = [r for r in report[0]["rows"] if r["kernel"].startswith("sglang block fp8 gemm")]
    tuned = {path: tiles.load_tables(path) for path in sorted(tiles.TUNED_DIR.glob("block_fp8_*.json"))}
    assert tuned, "the H200's tuned table ships in integration/gemm/tuned/"
    for arch in (89, 90):
        expected = {f"sglang block fp8 gemm 1x{b} {c.name}" for b in tbf.BLOCKS for _, c in tiles.TILE_CONFIGS}
        for path, tables in tuned.items():
            about = json.loads(path.read_text())
            if about["capability"] == arch:
                for b, table in tables.items():
                    for _, c in table:
                        name = f"sglang block fp8 gemm 1x{b} {c.name} [{about['device']}]"
                        expected |= {name} | ({f"{name} reduce"} if c.split_k > 1 else set())
        assert {r["kernel"] for r in gemm if r["arch"] == arch} == expected, arch
    assert not any(r["arch"] < 89 for r in gemm)  # no FP8 dot before sm_89: never launched there
    for r in gemm:
        assert "error" not in r, r
        assert r["shared_bytes"] <= r["shared_limit"] and r["spill_bytes"] < 256, r


def test_the_weight_only_gemms_compile_with_every_tile_config_and_code_kind_from_sm_80(report):
    # No FP8 dot: W4A16 and W8A16 run on every GPU from sm_80, so FP8 codes (W8A16's weights,
    # NVFP4's E4M3 scale bytes) take the integer decode before sm_89 (fp8e4nv would not compile
    # there). Both split K at decode sizes: the split sum compiles too.
    from breccia_sglang.kernels.gemm import tuned_configs, w4a16, w8a16

    split_sum = "breccia gemm split-k sum"  # compile_kernels.SPLIT_SUM (it cannot be imported interpreted)
    rows = [r for r in report[0]["rows"] if r["kernel"].startswith(("breccia w4a16 gemm", "breccia w8a16 gemm",
                                                                     split_sum))]
    kinds = [("w4a16", codes, w4a16) for codes in w4a16.CODES] + \
        [("w8a16", kind, w8a16) for kind in ("g128", "g32", "per-row")]  # compile_kernels.W8A16_GROUPS
    expected = {f"breccia {op} gemm {kind} {c.name}" for op, kind, module in kinds for _, c in module.TILE_CONFIGS}
    fp32 = {f"breccia {op} gemm {kind} {module.FP32_CONFIG.name}" for op, kind, module in kinds}
    # Each shipped tuned table's configs, for its GPU model's capability only.
    tuned = {arch: set() for arch in ARCHS}
    for path in sorted(tuned_configs.TUNED_DIR.glob("weight_only_*.json")):
        about = json.loads(path.read_text())
        for op, kind, _ in kinds:
            table = "w8a16" if op == "w8a16" else "w4a16-nvfp4" if kind == "e2m1" else "w4a16-int4"
            tuned.setdefault(about["capability"], set()).update(
                f"breccia {op} gemm {kind} {c.name} [{about['device']}]"
                for _, c in tuned_configs.load_tables(path).get(table, []))
    for arch in ARCHS:
        for dtype in DTYPES:
            kernels = {r["kernel"] for r in rows if (r["arch"], r["dtype"]) == (arch, dtype)}
            wanted = fp32 if dtype == "float32" else expected | tuned[arch]
            assert kernels == wanted | {split_sum}, (arch, dtype)
    for r in rows:
        assert "error" not in r, r
        if r["kernel"] != split_sum:
            assert r["native_fp8"] is (r["arch"] >= 89), r
        assert r["shared_bytes"] <= r["shared_limit"] and r["spill_bytes"] < 256, r


def test_the_prefill_routes_dequantize_pass_compiles_for_every_gpu_and_dtype(report):
    # The FP8 kernels' prefill route writes the weight in the activations' dtype: every scale
    # group kind (compile_kernels.W8A16_GROUPS) into every dtype, from sm_80 (the integer decode
    # there), without spills into the 16-bit dtypes the route serves.
    rows = [r for r in report[0]["rows"] if r["kernel"].startswith("breccia dequantize fp8")]
    assert {(r["arch"], r["dtype"], r["kernel"].rsplit(" ", 1)[1]) for r in rows} == \
        {(a, d, kind) for a in ARCHS for d in DTYPES for kind in ("g128", "g32", "per-row")}
    for r in rows:
        assert "error" not in r, r
        assert r["native_fp8"] is (r["arch"] >= 89), r
        assert r["shared_bytes"] <= r["shared_limit"], r
        if r["dtype"] != "float32":
            assert r["spill_bytes"] == 0, r


def test_the_4bit_prefill_routes_dequantize_pass_compiles_for_every_gpu_and_dtype(report):
    # The same pass over packed 4-bit weights: every code kind (compile_kernels.W4A16_GROUPS:
    # INT4, UINT4 with zero points, E2M1 with E4M3 scale bytes, whose decode is integer before
    # sm_89) into every dtype, without spills into the 16-bit dtypes the route serves.
    from breccia_sglang.kernels.gemm import four_bit

    rows = [r for r in report[0]["rows"] if r["kernel"].startswith("breccia dequantize 4bit")]
    assert {(r["arch"], r["dtype"], r["kernel"].rsplit(" ", 1)[1]) for r in rows} == \
        {(a, d, codes) for a in ARCHS for d in DTYPES for codes in four_bit.CODES}
    for r in rows:
        assert "error" not in r, r
        assert r["shared_bytes"] <= r["shared_limit"], r
        if r["dtype"] != "float32":
            assert r["spill_bytes"] == 0, r


def test_decode_tiles_scaled_after_the_dot_issue_fewer_instructions_per_weight_byte(report):
    # W8A16's 16-row tiles with one scale per row over the K tile (per row, groups of 128) put
    # the codes into an fp16 dot and scale its result; groups of 32 scale each weight first. At
    # decode sizes the loop's instructions per weight byte bound the speed (an H200 SM issues ~7
    # per byte of its share of HBM bandwidth), so the first must issue fewer on every target:
    # by over 10% where FP8 converts in hardware (sm_89+: 4.7-4.9 against 5.7-5.8 a byte);
    # sm_80 moves E4M3's bits by inline PTX, which both pay alike (5.7-5.8 against 7.6).
    for arch in ARCHS:
        per_byte = {r["kernel"]: r["instructions_per_weight_byte"] for r in report[0]["rows"]
                    if (r["arch"], r["dtype"]) == (arch, "bfloat16")
                    and r["kernel"].startswith(("breccia w4a16", "breccia w8a16"))}
        assert all(v > 0 for v in per_byte.values()), per_byte  # every weight-only GEMM has its loop found
        scaled_each = per_byte["breccia w8a16 gemm g32 16x64x128"]
        for kind in ("per-row", "g128"):
            bound = (0.9 if arch >= 89 else 1.0) * scaled_each
            assert per_byte[f"breccia w8a16 gemm {kind} 16x64x128"] < bound, (arch, per_byte)


def test_sm80s_ptx_e4m3_decode_halves_the_fp8_decode_tiles_instructions(report):
    # Before FP8 conversion in hardware (sm_80-86) the W8A16 GEMMs move E4M3's bits into fp16 by
    # inline PTX, 1.5 instructions a code: at the decode tile 4.1-5.8 instructions per weight
    # byte where the fp16 dot takes the codes (per row, g128), 7.6-7.7 where each weight is
    # scaled (g32), dense and MoE alike, under the ~9.8 at which an A100 SM streams its share
    # of HBM. Triton's elementwise bit moves issued 10.2-13.3 (with a NaN check per code).
    for dtype in ("bfloat16", "float16"):
        per_byte = {r["kernel"]: r["instructions_per_weight_byte"] for r in report[0]["rows"]
                    if (r["arch"], r["dtype"]) == (80, dtype)
                    and r["kernel"].startswith(("breccia w8a16 gemm", "breccia moe w8a16"))
                    and r["kernel"].endswith("16x64x128")}
        assert len(per_byte) == 6, per_byte
        for kernel, value in per_byte.items():
            assert value < (8.5 if " g32 " in kernel else 6.5), (dtype, kernel, value)


def test_sm80s_attention_reads_its_fp8_cache_with_the_ptx_decode_nearly_as_sm89_does(report):
    # The decode and extend kernels read FP8 K / V through the same PTX bit moves on sm_80-86:
    # their loops issue 1.09-1.25x what sm_89's hardware conversion issues (the rest is the
    # same code), where Triton's elementwise bit moves issued 1.42-2.24x.
    for kernel in READS_FP8:
        for dtype in ("bfloat16", "float16"):
            for head_dim in HEAD_DIMS:
                loops = {r["arch"]: r["loop_instructions"] for r in rows_of(report, kernel)
                         if (r["dtype"], r["head_dim"]) == (dtype, head_dim)}
                assert loops[89] > 0 and loops[80] < 1.35 * loops[89], (kernel, dtype, head_dim, loops)


def test_the_4bit_decode_tiles_issue_few_instructions_per_weight_byte(report):
    # The decode-sized W4A16 launch decodes its codes in inline PTX and leaves K out of its load
    # masks: INT4 g128 issues 6.0-6.1 instructions per weight byte on every target and dtype,
    # under the ~7 at which an H200 SM streams its share of HBM; NVFP4 in bf16 (its use: fp16
    # models take FP4 Marlin) 7.6-8.3, from 27 before the PTX decode. The elementwise decode
    # (17.9 for INT4) fails both bounds, and K back in the load masks NVFP4's (8.8-9.5).
    for arch in ARCHS:
        for dtype in ("bfloat16", "float16"):
            per_byte = {r["kernel"]: r["instructions_per_weight_byte"] for r in report[0]["rows"]
                        if (r["arch"], r["dtype"]) == (arch, dtype) and r["kernel"].startswith("breccia w4a16")}
            assert per_byte["breccia w4a16 gemm int4 16x64x128"] < 7, (arch, dtype, per_byte)
            if dtype == "bfloat16":
                assert per_byte["breccia w4a16 gemm e2m1 16x64x128"] < 8.5, (arch, per_byte)


def test_our_moe_w4a16_compiles_everywhere_and_decodes_as_the_dense_kernel_does(report):
    # triton-moe-w4a16 runs the dense W4A16 kernel's K loop over gathered rows and an expert's
    # weight: from sm_80, every dtype, no spills, and at the decode tile (one routed row an
    # expert) the dense kernel's instructions per weight byte (INT4 g128 6.1, NVFP4 in bf16
    # 7.6-8.4; the dense bounds above). SGLang's W4A16 MoE kernel reads every packed byte twice.
    from breccia_sglang.kernels.gemm import w4a16

    rows = [r for r in report[0]["rows"] if r["kernel"].startswith("breccia moe w4a16")]
    for arch in ARCHS:
        for dtype in DTYPES:
            configs = [w4a16.FP32_CONFIG] if dtype == "float32" else [c for top, c in w4a16.TILE_CONFIGS if top <= 64]
            per_byte = {r["kernel"]: r["instructions_per_weight_byte"] for r in rows
                        if (r["arch"], r["dtype"]) == (arch, dtype)}
            assert set(per_byte) == {f"breccia moe w4a16 {codes} {c.name}" for codes in ("int4", "e2m1")
                                     for c in configs}, (arch, dtype)
            if dtype != "float32":
                assert per_byte["breccia moe w4a16 int4 16x64x128"] < 7, (arch, dtype, per_byte)
            if dtype == "bfloat16":
                assert per_byte["breccia moe w4a16 e2m1 16x64x128"] < 8.5, (arch, per_byte)
    for r in rows:
        assert "error" not in r, r
        assert r["shared_bytes"] <= r["shared_limit"] and r["spill_bytes"] == 0, r


def test_our_moe_w8a16_compiles_everywhere_and_decodes_as_the_dense_kernel_does(report):
    # triton-moe-w8a16 runs the dense W8A16 kernel's K loop over gathered rows and an expert's
    # weight: from sm_80 (where it serves FP8 experts), every dtype, no spills, and at the decode
    # tile within 10% of the dense kernel's instructions per weight byte for the same scales
    # (bf16: sm_90 4.8-5.8 both; sm_80, whose E4M3 decode is integer, 11.8-13.3 against 11.5-13.0).
    from breccia_sglang.kernels.gemm import w8a16

    rows = [r for r in report[0]["rows"] if r["kernel"].startswith("breccia moe w8a16")]
    for arch in ARCHS:
        for dtype in DTYPES:
            configs = [w8a16.FP32_CONFIG] if dtype == "float32" else [c for top, c in w8a16.TILE_CONFIGS if top <= 64]
            per_byte = {r["kernel"]: r["instructions_per_weight_byte"] for r in rows
                        if (r["arch"], r["dtype"]) == (arch, dtype)}
            assert set(per_byte) == {f"breccia moe w8a16 {kind} {c.name}" for kind in ("per-row", "g128", "g32")
                                     for c in configs}, (arch, dtype)
            if dtype == "float32":
                continue
            dense = {r["kernel"]: r["instructions_per_weight_byte"] for r in report[0]["rows"]
                     if (r["arch"], r["dtype"]) == (arch, dtype) and r["kernel"].startswith("breccia w8a16 gemm")}
            for kind in ("per-row", "g128", "g32"):
                tile = f"{kind} 16x64x128"
                assert per_byte[f"breccia moe w8a16 {tile}"] < 1.1 * dense[f"breccia w8a16 gemm {tile}"], \
                    (arch, dtype, per_byte, dense)
    for r in rows:
        assert "error" not in r, r
        assert r["shared_bytes"] <= r["shared_limit"] and r["spill_bytes"] == 0, r


def test_sglangs_fused_moe_kernels_compile_with_every_moe_config_breccia_launches(report):
    # The FP8 kernel needs FP8 tensor cores (sm_89+); the INT4 one runs from sm_80. Shared memory
    # is what this catches: INT4's 64 x 128 tile with a 128-deep K needed 192 KiB, so its K tile
    # is capped at 64 (96 KiB, under sm_89's 99).
    from breccia_sglang.integration.moe.triton_fused import MAX_TILE_K, MOE_TILE_CONFIGS

    rows = [r for r in report[0]["rows"] if r["kernel"].startswith("sglang fused moe")]
    for kind, prefix, archs in (("w8a8", "sglang fused moe fp8 1x128", (89, 90)),
                                ("w4a16", "sglang fused moe int4 g128", ARCHS)):
        tiles = {f"{prefix} {c.block_m}x{c.block_n}x{min(128, MAX_TILE_K[kind])}" for _, c in MOE_TILE_CONFIGS}
        for arch in ARCHS:
            found = {r["kernel"] for r in rows if r["arch"] == arch and r["kernel"].startswith(prefix)}
            assert found == (tiles if arch in archs else set()), (kind, arch, found)
    for r in rows:
        assert "error" not in r, r
        assert r["shared_bytes"] <= r["shared_limit"] and r["spill_bytes"] < 256, r
