"""Tune the decode-sized launches of our weight-only GEMMs (W8A16 over FP8 codes, W4A16 over INT4
and NVFP4) on this GPU: tile configs and how many programs the K split aims at per SM.

    python benchmarks/tune_weight_only.py                        # Llama-3-8B's shapes, M = 1 and 16
    python benchmarks/tune_weight_only.py --kinds w8a16-g128 --m 1 8 16
    python benchmarks/tune_weight_only.py --smoke                # CPU: TRITON_INTERPRET=1, tiny, no timings

At M <= 16 these GEMMs are one pass over the weight, and their speed is how many loads stay in
flight: the output tile (16 x BLOCK_N), the K step, the pipeline depth and the K split
(``kernels/gemm/tiling.py``: programs per SM) decide it. Every candidate is compiled in parallel
worker processes first (Triton's file cache then serves the timing process), checked against the
fp32 reference of its kernel, then timed as ``_gpu_timing`` times (a CUDA graph over weight
copies 4x the L2) beside BF16 ``torch.matmul`` on the same shape.

Per tuned table (``kernels/gemm/tuned_configs.TABLES``: W8A16, W4A16 over INT4, W4A16 over
NVFP4) and M, the candidate of least summed slowdown over its kinds and shapes (time / that
shape's best time) wins, and a line says what it gives against BF16. The winners are written
beside the report as ``weight_only_<GPU model>.json``: copy it into
``breccia_sglang/kernels/gemm/tuned/`` to ship it for that GPU model, or point
``BRECCIA_SGLANG_WEIGHT_ONLY_CONFIGS`` at it. Each tuned M becomes the largest M of its row, so
``--m 1 16`` covers M = 1 and 2 .. 16; larger M keep the built-in tables
(``tune_weight_only.json`` holds every timing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from dataclasses import replace
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton compiles anything

import torch

from _common import OUT_DIR, error_summary, report_header
from _gpu_timing import copies_for, graph_time_us
from breccia_sglang import names
from breccia_sglang.kernels.gemm import reference, tiling, tuned_configs, w4a16, w8a16
from breccia_sglang.kernels.gemm.tiling import TileConfig

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
SMOKE_SHAPES = {"qkv": (96, 256)}
# kind -> (kernel module, codes or group): what each launch runs
KINDS = {"w8a16-g128": (w8a16, 128), "w8a16-g32": (w8a16, 32), "w8a16-per-row": (w8a16, None),
         "w4a16-int4-g128": (w4a16, ("int4", 128)), "w4a16-nvfp4": (w4a16, ("e2m1", 16))}
# kind -> the tuned table its launches take (tuned_configs.TABLES)
TABLE_OF = {"w8a16-g128": "w8a16", "w8a16-g32": "w8a16", "w8a16-per-row": "w8a16",
            "w4a16-int4-g128": "w4a16-int4", "w4a16-nvfp4": "w4a16-nvfp4"}
DEFAULT_KINDS = ("w8a16-g128", "w4a16-int4-g128", "w4a16-nvfp4")


def candidates(smoke: bool = False) -> list[TileConfig]:
    """16-row tiles (tl.dot's least), N and K tiles, warps, pipeline depth, and the programs per
    SM that the K split aims at. N tiles of 32 are left out: every warp reads the whole activation
    tile, and 32-wide tiles spend 1.7x the instructions per weight byte of 64-wide ones
    (``compile_kernels.py``)."""
    if smoke:  # the interpreter: a spread that covers a split and none
        return [TileConfig(16, 32, 64, 1, 1, 1, programs_per_sm=1), TileConfig(16, 64, 128, 1, 1, 1, programs_per_sm=4)]
    # 4 stages, the decode default, only: 24 candidates keep the GPU call's 90 s tuning step in time
    return [TileConfig(16, n, k, 1, warps, 4, programs_per_sm=per_sm) for n in (64, 128) for k in (128, 256)
            for warps in (2, 4) for per_sm in (2, 4, 8)]


def name_of(config: TileConfig) -> str:
    return f"{config.name} s{config.num_stages} w{config.num_warps} {config.programs_per_sm}/SM"


def make_weight(kind: str, n: int, k: int, device, gen, dequantized: bool = True) -> tuple[tuple, torch.Tensor | None]:
    """(the launch's weight arguments, the fp32 dequantized weight, if asked for): random codes
    and scales; the kernels' speed does not depend on their values."""
    module, what = KINDS[kind]
    if module is w8a16:
        codes = torch.randint(0, 0x7F, (n, k), generator=gen, device=device, dtype=torch.int32)  # 0x7F is NaN
        codes |= torch.randint(0, 2, (n, k), generator=gen, device=device, dtype=torch.int32) << 7
        codes = codes.to(torch.uint8)
        scales = torch.rand(n, 1 if what is None else k // what, generator=gen, device=device) * 1e-3 + 1e-4
        return (codes, scales), reference.w8a16_weight(codes, scales, group=what) if dequantized else None
    codes, group = what
    packed = torch.randint(0, 256, (n, k // 2), generator=gen, device=device, dtype=torch.int32).to(torch.uint8)
    if codes == "e2m1":  # E4M3 scale bytes 2^-6 .. 2^-3
        scales = torch.randint(0x18, 0x30, (n, k // group), generator=gen, device=device, dtype=torch.int32)
        scales = scales.to(torch.uint8)
    else:
        scales = torch.rand(n, k // group, generator=gen, device=device) * 1e-2 + 1e-3
    return (packed, scales), \
        reference.w4a16_weight(packed, scales, None, group=group, codes=codes) if dequantized else None


@contextlib.contextmanager
def launching_with(module, config: TileConfig):
    """The production launcher, with ``config`` in place of its table's choice (under the
    interpreter, which has no SMs, its programs per SM are per launch)."""
    chosen, interpreted = module.choose_config, tiling.INTERPRETER_PROGRAMS
    module.choose_config = lambda *_: config
    tiling.INTERPRETER_PROGRAMS = config.programs_per_sm
    try:
        yield
    finally:
        module.choose_config, tiling.INTERPRETER_PROGRAMS = chosen, interpreted


def run(kind: str, x: torch.Tensor, weight: tuple, config: TileConfig) -> torch.Tensor:
    module, what = KINDS[kind]
    with launching_with(module, config):
        if module is w8a16:
            return w8a16.w8a16_matmul(x, *weight, group=what)
        codes, group = what
        return w4a16.w4a16_matmul(x, *weight, group=group, codes=codes)


def _compile(job) -> str | None:
    """Worker: one launch on small K so Triton compiles it into its file cache; None, or why not."""
    kind, config, m, n = job
    interpreted = not torch.cuda.is_available()  # the interpreter (tests): nothing to compile, the path runs
    device, dtype = ("cpu", torch.float16) if interpreted else ("cuda", torch.bfloat16)
    weight, _ = make_weight(kind, n, 512, device, torch.Generator(device=device).manual_seed(0), dequantized=False)
    try:
        run(kind, torch.randn(m, 512, device=device).to(dtype), weight, config)
        if not interpreted:
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - the candidate is reported, the others still run
        return error_summary(exc)
    return None


def precompile(jobs: list, workers: int) -> dict:
    """(kind, config, M, N) -> error or None, launched by ``workers`` spawned processes."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return dict(zip(jobs, pool.map(_compile, jobs)))


def tune(args, on_kind_done=lambda rows: None) -> list[dict]:
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float16 if args.smoke else torch.bfloat16  # the interpreter's bf16 dot is broken
    shapes = SMOKE_SHAPES if args.smoke else {s: SHAPES[s] for s in args.shapes}
    ms = [1, 7] if args.smoke else args.m
    cands = candidates(args.smoke)
    rows, failed = [], {}
    if not args.smoke:
        # One job per compiled kernel: the split does not change it; M is specialized as 1 or not.
        jobs = list({(kind, replace(config, programs_per_sm=4), 1 if m == 1 else 16, 4096): None
                     for kind in args.kinds for config in cands for m in ms})
        started = time.time()
        failed = {(job[0], replace(job[1], programs_per_sm=None)): err
                  for job, err in precompile(jobs, args.jobs).items() if err}
        print(f"compiled {len(jobs)} launches in {time.time() - started:.0f} s, {len(failed)} failed", flush=True)

    gen = torch.Generator(device=device).manual_seed(0)
    for shape, (n, k) in shapes.items():
        for m in ms:
            x = torch.randn(m, k, generator=gen, device=device).to(dtype)
            base = {"shape": shape, "n": n, "k": k, "m": m}
            if not args.smoke:
                w_bf16 = torch.randn(n, k, generator=gen, device=device).to(dtype)
                bf16 = [w_bf16] + [torch.randn_like(w_bf16) for _ in range(copies_for(2 * n * k) - 1)]
                rows.append({**base, "kind": "bf16", "config": "torch.matmul", "us": graph_time_us(
                    [lambda w=w: x @ w.T for w in bf16], replays=args.replays)})
                del bf16
        for kind in args.kinds:
            copies = None
            for m in ms:
                x = torch.randn(m, k, generator=gen, device=device).to(dtype)
                ref = None
                for config in cands:
                    row = {"shape": shape, "n": n, "k": k, "m": m, "kind": kind, "config": name_of(config),
                           "tile": config}
                    if (kind, replace(config, programs_per_sm=None)) in failed:
                        rows.append(row | {"error": failed[kind, replace(config, programs_per_sm=None)]})
                        continue
                    if copies is None:  # the reference of the first copy only (fp32: 4-8x its bytes)
                        bytes_per_weight = n * k // (2 if KINDS[kind][0] is w4a16 else 1)
                        copies = [make_weight(kind, n, k, device, gen, dequantized=i == 0)
                                  for i in range(1 if args.smoke else copies_for(bytes_per_weight))]
                    weight, w_hat = copies[0]
                    try:
                        out = run(kind, x, weight, config).float()
                        ref = x.float() @ w_hat.T if ref is None else ref
                        row["rel_err"] = float((out - ref).norm() / ref.norm())
                        if not row["rel_err"] < 1e-2:  # the weight rounded to bf16 once, fp32 sums
                            raise RuntimeError(f"wrong result: relative error {row['rel_err']:.2e}")
                        if not args.smoke:
                            row["us"] = graph_time_us([lambda w=w: run(kind, x, w, config) for w, _ in copies],
                                                      replays=args.replays)
                    except Exception as exc:  # noqa: BLE001 - reported, the other candidates still run
                        row["error"] = error_summary(exc)
                    rows.append(row)
            del copies
            print(f"  {shape} {kind}", flush=True)
            on_kind_done(rows)
    return rows


def best(rows: list[dict]) -> tuple[dict[str, list[tuple[int, TileConfig]]], list[str]]:
    """(tuned table -> [(M, its winner)], a line per table and M): the winner is the candidate of
    least summed slowdown over the table's kinds and shapes measured at that M, with its speed
    against BF16 on each."""
    timed = [r for r in rows if "us" in r and "tile" in r]
    tables, lines = {}, []
    for table, m in sorted({(TABLE_OF[r["kind"]], r["m"]) for r in timed}):
        here = [r for r in timed if (TABLE_OF[r["kind"]], r["m"]) == (table, m)]
        cases = sorted({(r["kind"], r["shape"]) for r in here})
        complete = {c for c in {r["config"] for r in here} if sum(r["config"] == c for r in here) == len(cases)}
        here = [r for r in here if r["config"] in complete]  # a candidate that failed somewhere is out
        if not here:
            lines.append(f"{table} M={m}: no candidate ran on every shape")
            continue
        fastest = {case: min(r["us"] for r in here if (r["kind"], r["shape"]) == case) for case in cases}
        slowdown = {}
        for r in here:
            slowdown.setdefault(r["config"], []).append(r["us"] / fastest[r["kind"], r["shape"]])
        name, total = min(((c, sum(v)) for c, v in slowdown.items()), key=lambda cv: cv[1])
        per_case = []
        for kind, shape in cases:
            ours = next(r["us"] for r in here if (r["kind"], r["shape"], r["config"]) == (kind, shape, name))
            bf16 = next((r["us"] for r in rows if (r["shape"], r["m"], r["kind"]) == (shape, m, "bf16")), None)
            per_case.append(f"{kind} {shape} {ours:.1f} us" + (f" {bf16 / ours:.2f}x bf16" if bf16 else ""))
        tables.setdefault(table, []).append((m, next(r["tile"] for r in here if r["config"] == name)))
        lines.append(f"{table} M={m}: {name} (mean slowdown {total / len(cases):.3f}): " + "; ".join(per_case))
    return tables, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=list(KINDS))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--m", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--replays", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=min(12, os.cpu_count() or 1), help="compile processes")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, correctness only (TRITON_INTERPRET=1)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "tune_weight_only.json",
                        help="the report; the tuned table is written beside it")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no GPU here: tuning needs CUDA (use --smoke for a CPU correctness run)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = {**report_header("tune_weight_only", args),
              "device": torch.cuda.get_device_name() if not args.smoke else "CPU, TRITON_INTERPRET=1"}
    started = time.time()

    def write(rows: list[dict]) -> list[str]:
        tables, lines = best(rows)
        args.out.write_text(json.dumps({**header, "seconds": time.time() - started, "chosen": lines,
                                        "rows": [{k: v for k, v in r.items() if k != "tile"} for r in rows]},
                                       indent=1, default=str))
        if tables:  # on a GPU: the winners so far, as the table to ship for this GPU model
            write_table(args.out.parent, tables)
        return lines

    rows = tune(args, on_kind_done=write)
    errors = [r for r in rows if "error" in r]
    for r in errors[:20]:
        print(f"failed: {r['kind']} {r['shape']} M={r['m']} {r['config']}: {r['error']}")
    for line in write(rows):
        print(line)
    print(f"{len(errors)} failed candidates; wrote {args.out}")
    if not args.smoke:
        print(f"wrote {tuned_configs.tuned_file(torch.cuda.get_device_name()).name} beside it: copy it into "
              f"breccia_sglang/kernels/gemm/tuned/ to ship it, or set {names.ENV_WEIGHT_ONLY_CONFIGS} to it")
    if args.smoke and (errors or not any("rel_err" in r for r in rows)):
        sys.exit(1)


def write_table(folder: Path, tables: dict[str, list[tuple[int, TileConfig]]]) -> Path:
    """This GPU model's tuned file (``tuned_configs.load_tables`` reads it back)."""
    name = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    path = folder / tuned_configs.tuned_file(name).name
    tuned_configs.write_tables(path, tables, device=name, capability=major * 10 + minor,
                               measured=f"{datetime.date.today()}, python benchmarks/tune_weight_only.py "
                                        + " ".join(sys.argv[1:]) + f" (torch {torch.__version__})")
    return path


if __name__ == "__main__":
    main()
