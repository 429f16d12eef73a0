"""Quantize speed: ``breccia.cast`` of a whole weight against this project's chunked cast
(``format/chunked_cast.py``), here and on worker processes, side by side in one run.

    python benchmarks/bench_quantize.py                          # Llama-3-8B's down_proj rows, 4 recipes
    python benchmarks/bench_quantize.py --rows 64 --k 576 --recipes mxfp8 nvfp4 --jobs 1 2

Per recipe, on one (rows, K) fp32 weight drawn from a normal distribution:
  - ``breccia.cast``: breccia's own call on the whole weight (what a caller without this
    project gets; breccia 0.1.3 casts MXFP8 / NVFP4 / INT4 in NumPy, encoding E4M3 and E2M1 by
    a search over every code);
  - ``chunked``: ``chunked_cast`` in this process, a few rows at a time;
  - ``chunked, N workers``: the same on N forked worker processes (MXFP8 and NVFP4 only).
Every variant's codes and scales are compared with breccia's bit for bit, and a run that
differs fails. Reported: seconds, ns per element, and each variant's speed-up over
``breccia.cast``; an 8B model (8.0e9 linear weights) at that speed, for scale. JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import breccia
import torch

from _common import OUT_DIR, report_header
from breccia_sglang.format import make_recipe
from breccia_sglang.format.chunked_cast import SEARCHED_CODES, cast_workers, chunked_cast, usable_cpus

RECIPES = {"mxfp8": {}, "nvfp4": {}, "int4": {"group_size": 128}, "fp8-block": {"block_k": 128}}
MODEL_WEIGHTS = 8.0e9  # linear weights of an 8B model, for the "whole model at this speed" column


def same_bits(a: breccia.ScaledTensor, b: breccia.ScaledTensor) -> bool:
    parts = [(a.data, b.data), (a.scale, b.scale)] + ([(a.zero_point, b.zero_point)] if b.zero_point is not None
                                                      else [])
    return a.layout == b.layout and all(torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))
                                        for x, y in parts)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256, help="weight rows (default 256: a slice, for time)")
    parser.add_argument("--k", type=int, default=14336, help="weight K (default 14336: Llama-3-8B's down_proj)")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--jobs", nargs="+", type=int, default=sorted({2, usable_cpus()}),
                        help="worker counts to time (default 2 and every usable CPU)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "quantize.json")
    args = parser.parse_args(argv)

    x = torch.randn(args.rows, args.k, generator=torch.Generator().manual_seed(0))
    rows, failures = [], []
    for name in args.recipes:
        recipe = make_recipe(name, **RECIPES[name])
        baseline_s, reference = timed(lambda: breccia.cast(x, recipe))
        variants = [("chunked", None)]
        if isinstance(recipe, SEARCHED_CODES):
            variants += [(f"chunked, {jobs} workers", jobs) for jobs in args.jobs if jobs > 1]
        row = {"recipe": name, "breccia_cast_s": baseline_s, "variants": {}}
        for label, jobs in variants:
            with cast_workers(jobs or 1, (recipe,)) as workers:
                seconds, result = timed(lambda: chunked_cast(x, recipe, workers))
            if not same_bits(result, reference):
                failures.append(f"{name} {label}: codes or scales differ from breccia.cast")
            row["variants"][label] = {"s": seconds, "speedup": baseline_s / seconds}
        rows.append(row)

    print(f"weight {args.rows}x{args.k} fp32, {usable_cpus()} usable CPUs")
    print(f"{'recipe':10} {'variant':22} {'seconds':>8} {'ns/elem':>8} {'speed-up':>8} {'8B model':>9}")
    for row in rows:
        for label, seconds in [("breccia.cast", row["breccia_cast_s"])] + [(k, v["s"]) for k, v in
                                                                            row["variants"].items()]:
            per_element = seconds / x.numel()
            print(f"{row['recipe']:10} {label:22} {seconds:8.3f} {per_element * 1e9:8.1f} "
                  f"{row['breccia_cast_s'] / seconds:7.2f}x {per_element * MODEL_WEIGHTS / 60:7.1f} min")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report_header("bench_quantize", args), "rows": rows,
                                    "failures": failures}, indent=2))
    for failure in failures:
        print(f"FAIL {failure}")
    if not failures:
        print("OK every variant's codes and scales are breccia.cast's, bit for bit")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
