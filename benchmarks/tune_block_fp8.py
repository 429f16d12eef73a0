"""Tune the tile configs of the block FP8 GEMM (1 x B scales on SGLang's Triton W8A8 kernels)
on this GPU, and write the table the server then takes on every GPU of this model.

    python benchmarks/tune_block_fp8.py                  # Llama-3-8B's shapes, M = 1 .. 2048, B = 32/64/128
    python benchmarks/tune_block_fp8.py --blocks 128 --m 1 8 --jobs 8
    python benchmarks/tune_block_fp8.py --smoke          # CPU: TRITON_INTERPRET=1, tiny, no timings

Every candidate config (``CANDIDATES``, by range of M: SGLang's plain kernel, and its Hopper
variant with the transposed MMA and split K that small M needs) is first compiled in parallel
worker processes (Triton's file cache then serves the timing process), then checked against the
fp32 W8A8 reference and timed (replayed in a CUDA graph over weight copies 4x the L2, as
``_gpu_timing`` says why) on each shape and M, beside BF16 ``torch.matmul`` and SGLang's own
128x128 block kernel with its default config. The GEMM alone is timed: activations are quantized once
before (``bench_gemm.py`` times the whole linear, quantization included).

For each block width and measured M the config with the least summed slowdown over the shapes
(time / that shape's best time) wins; the table maps each measured M to a range of M up to the
next one. It is written to ``--out-dir/block_fp8_<GPU>.json`` (``block_fp8_tiles.load_tables``
reads it; ``BRECCIA_SGLANG_BLOCK_FP8_CONFIGS`` points the server at it, copying it into
``breccia_sglang/integration/gemm/tuned/`` ships it) with every timing in ``tune_block_fp8.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton compiles anything

import torch

from _common import OUT_DIR, error_summary, report_header, sglang_kernel_module
from _gpu_timing import copies_for, graph_time_us

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
SMOKE_SHAPES = {"qkv": (96, 256)}
BLOCKS = (128, 64, 32)


def candidates():
    """(largest M the candidate is for, config). Few tokens: narrow M tiles, many programs over
    N (or over K, split) to stream the weight; many tokens: big tiles that reuse it."""
    from breccia_sglang.integration.gemm.block_fp8_tiles import TileConfig as T

    small = [T(16, n, None, 1, 4, s) for n in (32, 64, 128) for s in (3, 4)]
    small += [T(16, n, None, 1, 4, s, swap_ab=True, split_k=k) for n in (64, 128) for s in (3, 4)
              for k in (1, 2, 4, 8, 16)]
    mid = [T(m, n, None, 8, 4, s) for m in (32, 64) for n in (64, 128) for s in (3, 4)]
    mid += [T(32, n, None, 1, 4, 3, swap_ab=True, split_k=k) for n in (64, 128) for k in (1, 2)]
    large = [T(64, 128, None, 8, 4, s) for s in (3, 4)] + [T(128, 128, None, 8, 8, s) for s in (3, 4)]
    large += [T(64, 256, None, 8, 8, s) for s in (3, 4)] + [T(128, 256, None, 8, 8, 3)]
    return [(16, c) for c in small] + [(256, c) for c in mid] + [(1 << 62, c) for c in large]


def for_m(m: int, cands) -> list:
    """The candidates measured at M: those of M's range."""
    top = min(t for t, _ in cands if m <= t)
    return [c for t, c in cands if t == top]


def random_weight(n: int, k: int, block: int, device, gen):
    """Random finite E4M3 codes and positive scales: the kernel's speed does not depend on them."""
    codes = torch.randint(0, 0x7F, (n, k), generator=gen, device=device, dtype=torch.int32)  # 0x7F is NaN
    codes |= torch.randint(0, 2, (n, k), generator=gen, device=device, dtype=torch.int32) << 7
    scales = torch.rand(n, k // block, generator=gen, device=device) * 1e-3 + 1e-4
    return codes.to(torch.uint8).view(torch.float8_e4m3fn), scales


def quantize(x: torch.Tensor, group: int):
    from breccia_sglang.weights import quantize_activations_fp8

    return quantize_activations_fp8(x, group)


def launch(codes, x_scale, weight, weight_scale, block, config, out_dtype, interpreted):
    """The production launcher with ``config`` in place of its table's choice."""
    from breccia_sglang.integration.gemm import triton_block_fp8 as tbf

    chosen, tbf.choose_config = tbf.choose_config, (lambda *_: config)
    try:
        return tbf.block_fp8_matmul(codes, x_scale, weight, weight_scale, block, out_dtype, interpreted)
    finally:
        tbf.choose_config = chosen


def _compile(job) -> str | None:
    """Worker: launch one (config, block, M, N) on small K so Triton compiles it into its file
    cache; None, or why it failed."""
    config, block, m, n = job
    interpreted = not torch.cuda.is_available()  # the interpreter (tests): nothing to compile, the path runs
    device, dtype = ("cpu", torch.float16) if interpreted else ("cuda", torch.bfloat16)
    gen = torch.Generator(device=device).manual_seed(0)
    weight, scales = random_weight(n, 4 * block, block, device, gen)
    codes, x_scale = quantize(torch.randn(m, 4 * block, device=device).to(dtype), block)
    try:
        launch(codes, x_scale, weight, scales, block, config, dtype, interpreted)
        if not interpreted:
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - the config is reported, the others still run
        return error_summary(exc)
    return None


def precompile(jobs: list, workers: int) -> dict:
    """(config, block, m, n) -> error or None, compiled by ``workers`` spawned processes."""
    if workers <= 1:
        return {job: _compile(job) for job in jobs}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=sglang_kernel_module,
                             initargs=("sglang.kernels.ops.gemm.fp8_kernel",)) as pool:
        return dict(zip(jobs, pool.map(_compile, jobs)))


def time_ms(calls) -> float:
    """One call's time: the calls (one per weight copy) replayed in a CUDA graph (_gpu_timing)."""
    return graph_time_us(calls, replays=10) / 1e3


def tune(args, on_block_done=lambda rows: None) -> dict:
    device = torch.device("cpu" if args.smoke else "cuda")
    interpreted = args.smoke
    dtype = torch.float16 if interpreted else torch.bfloat16  # the interpreter's bf16 dot is broken
    shapes = SMOKE_SHAPES if args.smoke else {s: SHAPES[s] for s in args.shapes}
    ms = [1, 7, 33] if args.smoke else args.m
    fp8_kernel = sglang_kernel_module("sglang.kernels.ops.gemm.fp8_kernel")  # before breccia_sglang.integration
    cands = candidates()

    rows, started = [], time.time()
    if not interpreted:
        # One job per compiled kernel: Triton specializes M and N only as 1 / a multiple of 16 /
        # other, and the split-K reduction on M * N, its size.
        by_key = {(c, b, m == 1, m % 16 == 0, n % 16 == 0, m * n if c.split_k > 1 else None): (c, b, m, n)
                  for b in args.blocks for m in ms for n, _ in shapes.values()
                  for c in for_m(m, cands) if c.why_not(b) is None}
        jobs = sorted(by_key.values(), key=lambda j: (j[1], j[2], j[3], j[0].name))
        print(f"compiling {len(jobs)} launches in {args.jobs} processes", flush=True)
        failed = {job: err for job, err in precompile(jobs, args.jobs).items() if err}
        for (c, b, m, n), err in failed.items():  # the config fails for every M and N of its key
            rows += [{"block": b, "m": m2, "n": n2, "config": c.name, "error": err}
                     for m2 in ms for n2, _ in shapes.values() if (m2 == 1, m2 % 16 == 0) == (m == 1, m % 16 == 0)]
        print(f"compiled in {time.time() - started:.0f} s, {len(failed)} failed", flush=True)

    gen = torch.Generator(device=device).manual_seed(0)
    for block in args.blocks:  # the block widths in turn: each one's table is written once it is done
        for shape, (n, k) in shapes.items():
            # Copies of the weight, together 4x the L2: each timed call streams its own (_gpu_timing).
            copies = [random_weight(n, k, block, device, gen) for _ in range(1 if interpreted else copies_for(n * k))]
            weight, scales = copies[0]
            w_hat = weight.float() * scales.repeat_interleave(block, dim=1)
            for m in ms:
                x = torch.randn(m, k, generator=gen, device=device).to(dtype)
                codes, x_scale = quantize(x, block)
                ref = (codes.float() * x_scale.repeat_interleave(block, dim=1)) @ w_hat.T
                base = {"shape": shape, "n": n, "k": k, "block": block, "m": m}
                if not interpreted and block == args.blocks[0]:
                    w_bf16 = w_hat.to(dtype)
                    bf16 = [w_bf16] + [torch.randn_like(w_bf16) for _ in range(copies_for(2 * n * k) - 1)]
                    rows.append({**base, "config": "bf16 torch.matmul", "ms": time_ms([
                        lambda w=w: x @ w.T for w in bf16])})
                    del bf16
                    if n % 128 == 0 and k % 128 == 0:
                        tiles = scales.view(n // 128, 128, k // block).amax(1)[:, :: 128 // block].contiguous() \
                            if block <= 128 else None
                        c128, s128 = quantize(x, 128)
                        rows.append({**base, "config": "sglang 128x128 default", "ms": time_ms([
                            lambda w=w: fp8_kernel.w8a8_block_fp8_matmul_triton(c128, w, s128, tiles, [128, 128],
                                                                                 dtype) for w, _ in copies])})
                for config in for_m(m, cands) if not interpreted else [c for _, c in cands[::6]]:
                    if config.why_not(block) or any(r.get("error") and r["config"] == config.name and
                                                    (r["block"], r["m"], r["n"]) == (block, m, n) for r in rows):
                        continue
                    row = {**base, "config": config.name, "tile": config}
                    try:
                        out = launch(codes, x_scale, weight, scales, block, config, dtype, interpreted).float()
                        row["rel_err"] = float((out - ref).norm() / ref.norm())
                        if not row["rel_err"] < 1e-2:  # fp32 sums of the same products, bf16 output
                            raise RuntimeError(f"wrong result: relative error {row['rel_err']:.2e}")
                        if not interpreted:
                            row["ms"] = time_ms([lambda w=w, s=s: launch(codes, x_scale, w, s, block, config, dtype, False)
                                                 for w, s in copies])
                    except Exception as exc:  # noqa: BLE001 - reported, the other configs still run
                        row["error"] = error_summary(exc)
                    rows.append(row)
            print(f"  {shape} 1x{block}: {time.time() - started:.0f} s", flush=True)
        on_block_done(rows)
    return {"rows": rows, "seconds": time.time() - started, "ms": ms}


def best_tables(rows: list[dict], ms: list[int], blocks) -> tuple[dict, list[str]]:
    """block -> [(largest M, config)]: per measured M, the config of least summed slowdown over
    the shapes; and a line per (block, M) saying what it gives against BF16 and SGLang's 128x128."""
    tables, lines = {}, []
    timed = [r for r in rows if "ms" in r and "tile" in r]
    for block in blocks:
        table = []
        for i, m in enumerate(ms):
            here = [r for r in timed if (r["block"], r["m"]) == (block, m)]
            if not here:
                continue
            best_per_shape = {s: min(r["ms"] for r in here if r["shape"] == s) for s in {r["shape"] for r in here}}
            score = {}
            for r in here:
                score.setdefault(r["config"], [r["tile"], 0.0, 0])
                score[r["config"]][1] += r["ms"] / best_per_shape[r["shape"]]
                score[r["config"]][2] += 1
            complete = {name: v for name, v in score.items() if v[2] == len(best_per_shape)}
            name, (tile, slowdown, _) = min(complete.items(), key=lambda kv: kv[1][1])
            top = ms[i + 1] - 1 if i + 1 < len(ms) else 1 << 62
            table.append((top, tile))
            ratios = []
            for shape in sorted(best_per_shape):
                ours = next(r["ms"] for r in here if r["shape"] == shape and r["config"] == name)
                bf16 = next((r["ms"] for r in rows if (r.get("shape"), r["m"], r["config"]) ==
                             (shape, m, "bf16 torch.matmul") and "ms" in r), None)
                theirs = next((r["ms"] for r in rows if (r.get("shape"), r["m"], r["config"]) ==
                               (shape, m, "sglang 128x128 default") and "ms" in r), None)
                ratios.append(f"{shape} {ours * 1e3:.1f} us" + (f" {bf16 / ours:.2f}x bf16" if bf16 else "")
                              + (f" {ours / theirs:.2f}x sglang-128x128's time" if theirs else ""))
            lines.append(f"1x{block} M={m:5d} {name:32} mean slowdown {slowdown / len(best_per_shape):.3f}: "
                         + "; ".join(ratios))
        if table:
            tables[block] = table
    return tables, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8, 32, 128, 512, 2048])
    parser.add_argument("--blocks", type=int, nargs="+", default=list(BLOCKS), choices=list(BLOCKS))
    parser.add_argument("--jobs", type=int, default=min(12, os.cpu_count() or 1), help="compile processes")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, correctness only (TRITON_INTERPRET=1)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no GPU here: tuning needs CUDA (use --smoke for a CPU correctness run)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    header = {**report_header("tune_block_fp8", args),
              "device": torch.cuda.get_device_name() if not args.smoke else "CPU, TRITON_INTERPRET=1"}
    started = time.time()
    result = tune(args, on_block_done=lambda rows: write(args, header, rows, time.time() - started, quiet=True))
    rows = result["rows"]
    errors = [r for r in rows if "error" in r]
    for r in errors[:20]:
        print(f"failed: 1x{r['block']} M={r['m']} N={r['n']} {r['config']}: {r['error']}")
    print(f"{len(errors)} failed configs")
    write(args, header, rows, result["seconds"], quiet=False)
    if args.smoke and (errors or not any("rel_err" in r for r in rows)):
        sys.exit(1)


def write(args, header: dict, rows: list[dict], seconds: float, quiet: bool) -> None:
    """The timings, and on a GPU the table of every block width measured so far."""
    report = {**header, "seconds": seconds, "rows": [{key: v for key, v in r.items() if key != "tile"} for r in rows]}
    if not args.smoke:
        from breccia_sglang.integration.gemm.block_fp8_tiles import routes_of, tuned_file, write_tables

        ms = args.m
        tables, lines = best_tables(rows, ms, sorted({r["block"] for r in rows if "ms" in r and "tile" in r}))
        report["chosen"] = lines
        name = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        path = args.out_dir / tuned_file(name).name
        # The shipped file's batch routes carry over: tuning the tiles does not measure them.
        write_tables(path, tables, device=name, capability=major * 10 + minor,
                     measured=f"{datetime.date.today()}, python benchmarks/tune_block_fp8.py "
                              + " ".join(sys.argv[1:]) + f" (torch {torch.__version__})", **routes_of(tuned_file(name)))
        if not quiet:
            for line in lines:
                print(line)
            print(f"wrote {path}")
    (args.out_dir / "tune_block_fp8.json").write_text(json.dumps(report, indent=1, default=str))
    if not quiet:
        print(f"wrote {args.out_dir / 'tune_block_fp8.json'}")

if __name__ == "__main__":
    main()
