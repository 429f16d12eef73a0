"""Resident weight memory: what the loaded model's quantized linear layers hold, per recipe.

    python benchmarks/bench_memory.py                       # demo model: bf16, fp8, int4-g64, nvfp4
    python benchmarks/bench_memory.py --recipes int4-g64     # one recipe

Each recipe's checkpoint of the demo model is loaded by a real ``sgl.Engine`` (CPU), which logs
what its breccia linear layers hold, read from their parameters (``integration/resident_bytes.py``).
That is compared with the packed ideal, from the checkpoint's own shapes: N * K / 2 bytes for
4-bit codes (N * K for 8-bit) plus the scale and zero-point bytes as stored. Also reported:
the ratio to the same layers in BF16, and the whole-model ``mem usage`` SGLang logs after
loading (on CPU, the drop in free system memory: a rough figure).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile

from _common import OUT_DIR, report_header, run_engine
from breccia_sglang import names
from breccia_sglang.format import BrecciaCheckpoint, make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint
from breccia_sglang.format.recipes import packs_two_per_byte
from breccia_sglang.harness.cache import cache_dir, cached_checkpoint
from breccia_sglang.harness.demo_model import fetch_demo_model

RECIPES = {"fp8": dict(name="fp8"), "int4-g64": dict(name="int4", group_size=64), "nvfp4": dict(name="nvfp4")}
RESIDENT_LINE = re.compile(r"(\d+) quantized layers \(linear and MoE\) hold .*? against .*? in BF16: ([\d.]+)x \[bytes ([\d]+) / ([\d]+)\]")
SGLANG_LINE = re.compile(r"Load weight end\..*mem usage=([\d.]+) GB")
TOLERANCE = 0.01  # the bar: resident within 1% of the packed ideal


def packed_ideal(checkpoint) -> int:
    ckpt = BrecciaCheckpoint.open(checkpoint)
    total = 0
    for entry in ckpt.entries.values():
        rows, k = entry.data.shape[-2], entry.data.shape[-1]
        total += rows * k // (2 if packs_two_per_byte(entry.recipe) else 1)
        total += entry.scale.nbytes + (entry.zero_point.nbytes if entry.zero_point else 0)
    return total


def checkpoint_for(recipe: str, src):
    if recipe == "bf16":
        return src
    params = dict(RECIPES[recipe])
    recipe_obj = make_recipe(params.pop("name"), **params)
    return cached_checkpoint(cache_dir() / f"{src.name}-breccia-{recipe}",
                             lambda dst: quantize_checkpoint(src, dst, recipe_obj, overwrite=True))


def measure(recipe: str, checkpoint) -> dict:
    engine = {"model_path": str(checkpoint), "device": "cpu", "dtype": "bfloat16", "max_total_tokens": 512,
              "log_level": "info"}  # the resident-bytes and load lines are INFO
    spec = {"enable": recipe != "bf16", "engine": engine if recipe == "bf16" else {**engine, names.ENGINE_KEYWORD: True},
            "requests": [{"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 1, "temperature": 0}}]}
    with tempfile.TemporaryDirectory() as tmp:
        result = run_engine(spec, tmp, timeout=600)
    if not result.get("ok"):
        raise RuntimeError(f"{recipe}: the engine failed: {result.get('error')}\n{result['stderr'][-3000:]}")
    sglang = SGLANG_LINE.search(result["stderr"])
    row = {"recipe": recipe, "sglang_mem_usage_gb": float(sglang.group(1)) if sglang else None}
    found = RESIDENT_LINE.search(result["stderr"])
    if recipe != "bf16":
        if not found:
            raise RuntimeError(f"{recipe}: no resident-bytes line in the engine log")
        layers, ratio, resident, bf16 = int(found.group(1)), float(found.group(2)), int(found.group(3)), int(found.group(4))
        ideal = packed_ideal(checkpoint)
        row.update(layers=layers, resident_bytes=resident, bf16_bytes=bf16, ratio_to_bf16=ratio,
                   packed_ideal_bytes=ideal, resident_over_ideal=resident / ideal)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["bf16", *RECIPES], choices=["bf16", *RECIPES])
    parser.add_argument("--out", default=str(OUT_DIR / "memory.json"))
    args = parser.parse_args(argv)
    report = report_header("bench_memory", args, argv)
    src = fetch_demo_model(log=lambda m: print(m, file=sys.stderr))
    rows = [measure(recipe, checkpoint_for(recipe, src)) for recipe in args.recipes]
    print(f"{'recipe':10} {'layers':>6} {'resident MiB':>12} {'ideal MiB':>10} {'res/ideal':>9} {'x BF16':>7} "
          f"{'SGLang mem usage GB':>20}")
    for r in rows:
        if "resident_bytes" in r:
            print(f"{r['recipe']:10} {r['layers']:6d} {r['resident_bytes'] / 2**20:12.2f} "
                  f"{r['packed_ideal_bytes'] / 2**20:10.2f} {r['resident_over_ideal']:9.4f} {r['ratio_to_bf16']:7.3f} "
                  f"{r['sglang_mem_usage_gb']!s:>20}")
        else:
            print(f"{r['recipe']:10} {'':>6} {'':>12} {'':>10} {'':>9} {1.0:7.3f} {r['sglang_mem_usage_gb']!s:>20}")
    off = [r["recipe"] for r in rows if "resident_over_ideal" in r and abs(r["resident_over_ideal"] - 1) > TOLERANCE]
    print("FAIL resident bytes off the packed ideal by more than 1%: " + ", ".join(off) if off else
          "OK every recipe's resident bytes are within 1% of the packed ideal")
    report["rows"] = rows
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
