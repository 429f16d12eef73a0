"""Paged decode attention: breccia's FP8 kernel vs SGLang's Triton decode on BF16 and FP8 KV.

GPU (the numbers the kernels issue asks for):
    python benchmarks/bench_decode.py                      # batch 32/64 x context 4k-32k
    python benchmarks/bench_decode.py --batch 32 --context 8192 16384

CPU smoke run (TRITON_INTERPRET=1 is set for you; correctness only, no timings):
    python benchmarks/bench_decode.py --smoke

Tune the decode kernel's tiles for this GPU model (``kernels/attention/decode_tiles.py``):
    python benchmarks/bench_decode.py --tune               # then ship the report as tuned/decode_<GPU>.json

Side by side in one run, for each (batch, context):
  breccia-fp8     paged_decode_attention: FP8 K/V + one fp32 scale per (token, kv head), read in place
  sglang-bf16     SGLang's Triton decode_attention_fwd on a BF16 KV cache
  sglang-fp8      the same kernel on SGLang's per-tensor FP8 KV cache (one k_scale / v_scale)
FlashInfer's FP8 decode, the issue's third baseline, is not measured yet (it needs flashinfer
carried onto the GPU machine and its page-table layout built from these slots). On a GPU
before sm_89 (A100, A10) Triton has no fp8e4nv type, which SGLang's kernel reads its FP8
cache as: a baseline that fails reports its error in its row and the others still run; ours
decodes E4M3 with integer ops there (``fp8_decode`` in the JSON says which).
With ``--tune``, ours also runs with every candidate tile config (``decode_tiles.CANDIDATES``,
rows ``breccia-fp8 <tiles>``); the config with the least summed slowdown over the cases (time /
that case's best) wins, and the report's ``"tiles"`` entry (per head_dim) is what the server
reads from a tuned file. The report is rewritten after every case, so a run cut short keeps
what it measured.
Each is checked against an fp32 attention on the K/V it reads before it is timed. Timing: the
step replayed in a CUDA graph, as SGLang runs decode (``_gpu_timing``: eager launches on the lent
machine's CPU would time the host; a variant that cannot be captured is timed eagerly and says so). Bandwidth counts the bytes each
variant must read (K/V data, its scales, the slot indices) over its time, against this device's
measured copy bandwidth (bytes read + written by a large device-to-device copy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton compiles anything

import torch

from _common import OUT_DIR, error_summary, report_header, sglang_kernel_module
from _gpu_timing import time_us
from breccia_sglang.kernels.attention import decode_tiles, paged_decode_attention, write_kv_fp8
from breccia_sglang.kernels.attention.decode import default_num_kv_splits
from breccia_sglang.kernels.attention.reference import reference_attention
from breccia_sglang.kernels.launch import native_fp8_on
from breccia_sglang.kvcache import PagedKV, PagedScaledTensor

FP8 = torch.float8_e4m3fn
OURS = "breccia-fp8"
WIDE = "sglang-bf16"  # SGLang's kernel on the unquantized cache (fp16 in --smoke: the interpreter's bf16 is broken)
PAGE = 16  # slots of a request sit on shuffled 16-token pages, as SGLang's allocator leaves them


def build_cache(batch: int, context: int, kv_heads: int, head_dim: int, dtype, device, gen) -> dict:
    """Random K/V for every request, stored three ways, and SGLang-style slot indices.

    ``gen`` lives on ``device``: at batch 64 x 32k tokens one K tensor is 2^31 fp32 values,
    too many to draw on the host and copy over inside a short GPU lease.
    """
    pages_per_req = -(-context // PAGE)
    pages = (torch.randperm(batch * pages_per_req, generator=gen, device=device) + 1).view(batch, pages_per_req)
    slots = (pages[:, :, None] * PAGE + torch.arange(PAGE, device=device)).view(batch, -1)[:, :context].reshape(-1)
    num_slots = (batch * pages_per_req + 1) * PAGE
    kv_indices = slots.to(torch.int64)
    kv_indptr = torch.arange(batch + 1, device=device, dtype=torch.int32) * context
    cache = {"kv_indptr": kv_indptr, "kv_indices": kv_indices, "num_slots": num_slots}
    for name in ("k", "v"):
        x = torch.randn(batch * context, kv_heads, head_dim, generator=gen, device=device)
        if name == "k":
            x[:, :, 5] *= 20  # an outlier channel, as real keys have
        data = torch.zeros(num_slots, kv_heads, head_dim, dtype=torch.uint8, device=device)
        scale = torch.zeros(num_slots, kv_heads, device=device)
        write_kv_fp8(x, PagedScaledTensor(data, scale, kv_indices, PAGE))
        wide = torch.zeros(num_slots, kv_heads, head_dim, dtype=dtype, device=device)  # the unquantized cache
        wide[kv_indices] = x.to(dtype)
        tensor_scale = float(x.abs().max() / 448.0)  # a calibrated per-tensor scale: SGLang's best case
        fp8 = torch.zeros(num_slots, kv_heads, head_dim, dtype=FP8, device=device)
        fp8[kv_indices] = (x / tensor_scale).to(FP8)
        cache[name] = {"data": data, "scale": scale, "wide": wide, "fp8": fp8, "tensor_scale": tensor_scale}
        del x
    return cache


def kv_read_bytes(variant: str, batch: int, context: int, kv_heads: int, head_dim: int) -> int:
    rows = batch * context * kv_heads
    element = 2 if variant == WIDE else 1
    scales = 2 * rows * 4 if variant.startswith(OURS) else 0
    return 2 * rows * head_dim * element + scales + batch * context * 8  # K + V, scales, int64 slot ids


def sglang_decode_kernel():
    """SGLang's Triton ``decode_attention_fwd`` (also on a machine without SGLang's serving stack)."""
    return sglang_kernel_module("sglang.kernels.ops.attention.decode_attention").decode_attention_fwd


def variants(q, cache, sm_scale: float, max_kv_splits: int, tune: bool = False) -> dict:
    """name -> (run(), K/V as the variant reads them in fp32 for the correctness check). ``tune``:
    ours with every candidate tile config too (``breccia-fp8 <tiles>``)."""
    batch, q_heads, head_dim = q.shape
    splits = default_num_kv_splits(cache["kv_indptr"], max_kv_splits)
    part_out = torch.empty(batch, q_heads, max_kv_splits, head_dim, device=q.device)
    part_lse = torch.empty(batch, q_heads, max_kv_splits, device=q.device)
    out = torch.empty_like(q)
    k, v = cache["k"], cache["v"]
    found = {}

    context = PagedKV.of(k["data"], k["scale"], v["data"], v["scale"], cache["kv_indices"], PAGE,
                         indptr=cache["kv_indptr"])

    def ours(tiles=None):
        return paged_decode_attention(q, context, sm_scale, num_kv_splits=splits, out=out,
                                      part_out=part_out, part_lse=part_lse, tiles=tiles)

    def dequant(t):
        return t["data"].view(FP8).float() * t["scale"][:, :, None]

    found[OURS] = (ours, dequant(k), dequant(v))  # the tiles the server takes here (tuned or default)
    for tiles in decode_tiles.CANDIDATES if tune else ():
        found[f"{OURS} {tiles.name}"] = (lambda tiles=tiles: ours(tiles), *found[OURS][1:])
    try:
        decode_attention_fwd = sglang_decode_kernel()
    except Exception as exc:  # sglang is not installed on the GPU machine unless carried
        print(f"SGLang's decode kernel is unavailable here ({type(exc).__name__}: {exc}); skipping its baselines")
    else:
        for name, key, k_scale, v_scale in ((WIDE, "wide", 1.0, 1.0),
                                            ("sglang-fp8", "fp8", k["tensor_scale"], v["tensor_scale"])):
            def sglang(key=key, k_scale=k_scale, v_scale=v_scale):
                decode_attention_fwd(q, k[key], v[key], out, cache["kv_indptr"], cache["kv_indices"], part_out,
                                     part_lse, splits, max_kv_splits, sm_scale, k_scale, v_scale)
                return out
            found[name] = (sglang, k[key].float() * k_scale, v[key].float() * v_scale)
    return found


def check(run, k, v, q, cache, sm_scale) -> float:
    """Relative L2 error of a variant's output against fp32 attention on the same K/V."""
    out = run().float()
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite attention output")
    indptr, indices = cache["kv_indptr"].tolist(), cache["kv_indices"]
    errors, norms = 0.0, 0.0
    for b in range(q.shape[0]):
        slots = indices[indptr[b]:indptr[b + 1]]
        ref = reference_attention(q[b:b + 1].float(), k[slots], v[slots], sm_scale)[0]
        errors += float((out[b] - ref).pow(2).sum())
        norms += float(ref.pow(2).sum())
    return math.sqrt(errors / norms)


def copy_bandwidth(device) -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy (median of do_bench)."""
    import triton

    src = torch.randn(2**28, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def run_case(batch, context, args, device, gen, peak) -> list[dict]:
    q_heads = args.kv_heads * args.group
    cache = build_cache(batch, context, args.kv_heads, args.head_dim, args.dtype, device, gen)
    q = torch.randn(batch, q_heads, args.head_dim, generator=gen, device=device).to(args.dtype)
    sm_scale = 1.0 / math.sqrt(args.head_dim)
    rows = []
    for name, (run, k, v) in variants(q, cache, sm_scale, args.max_kv_splits, args.tune).items():
        print(f"  {name}: batch {batch}, context {context}", flush=True)
        row = {"variant": name, "batch": batch, "context": context}
        try:
            row["rel_l2"] = check(run, k, v, q, cache, sm_scale)
        except Exception as exc:
            if name.startswith(OURS):
                raise
            # A baseline this GPU cannot run (SGLang's FP8 decode needs Triton's fp8e4nv,
            # sm_89+) is reported, and the others still measured.
            row["error"] = error_summary(exc)
            print(f"  {name} failed here: {row['error']}", flush=True)
            rows.append(row)
            continue
        if device.type == "cuda":
            us, row["timing"] = time_us([run])  # in a CUDA graph, as SGLang runs decode
            moved = kv_read_bytes(name, batch, context, args.kv_heads, args.head_dim)
            row.update(time_us=us, bytes=moved, gbps=moved / (us * 1e-6) / 1e9,
                       peak_fraction=moved / (us * 1e-6) / peak)
        rows.append(row)
        del k, v
    wide = next((r for r in rows if r["variant"] == WIDE and "time_us" in r), None)
    for r in rows:
        if wide and "time_us" in r:
            r["time_vs_sglang_bf16"] = r["time_us"] / wide["time_us"]
    del cache
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def best_tiles(rows: list[dict]) -> tuple[decode_tiles.DecodeTiles, dict[str, float]] | None:
    """The candidate with the least summed slowdown (time / that case's best candidate time) over
    the cases where every candidate was timed, and each candidate's sum; None if none was."""
    candidates = {f"{OURS} {t.name}": t for t in decode_tiles.CANDIDATES}
    cases: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r["variant"] in candidates and "time_us" in r:
            cases.setdefault((r["batch"], r["context"]), {})[r["variant"]] = r["time_us"]
    complete = [times for times in cases.values() if len(times) == len(candidates)]
    if not complete:
        return None
    slowdown = {name: sum(times[name] / min(times.values()) for times in complete) for name in candidates}
    winner = min(slowdown, key=slowdown.get)
    return candidates[winner], {name.removeprefix(f"{OURS} "): value for name, value in slowdown.items()}


def print_table(rows: list[dict]) -> None:
    print(f"{'variant':22} {'batch':>5} {'context':>7} {'rel L2':>8} {'time us':>9} {'GB/s':>7} {'% peak':>7} {'vs bf16':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:22} {r['batch']:5d} {r['context']:7d}   failed: {r['error']}")
            continue
        if "time_us" in r:
            ratio = r.get("time_vs_sglang_bf16", float("nan"))
            timing = f"{r['time_us']:9.1f} {r['gbps']:7.0f} {100 * r['peak_fraction']:6.1f}% {ratio:7.3f}"
        else:
            timing = "      n/a (CPU: correctness only)"
        print(f"{r['variant']:22} {r['batch']:5d} {r['context']:7d} {r['rel_l2']:8.2e} {timing}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--context", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--group", type=int, default=4, help="query heads per kv head (GQA)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--max-kv-splits", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, correctness only (TRITON_INTERPRET=1)")
    parser.add_argument("--tune", action="store_true",
                        help="also run ours with every candidate tile config; the report's \"tiles\" is the winner")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "decode.json")
    args = parser.parse_args()
    if args.smoke:  # the interpreter's bf16 is broken: fp16 there
        args.batch, args.context, args.kv_heads, args.group, args.head_dim = [3], [100], 2, 2, 64
        args.max_kv_splits, args.dtype = 4, "float16"
    args.dtype = getattr(torch, args.dtype)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        sys.exit("no GPU here: timings need CUDA (use --smoke for a CPU correctness run)")

    gen = torch.Generator(device=device).manual_seed(0)
    peak = copy_bandwidth(device) if device.type == "cuda" else None
    started = time.time()
    header = {
        **report_header("decode", args),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}), TRITON_INTERPRET=1",
        "measured_copy_bandwidth_gbps": peak / 1e9 if peak else None,
        "fp8_decode": "native float8e4nv" if native_fp8_on(device) else "integer bit moves (no fp8e4nv before sm_89)",
        "kv_heads": args.kv_heads, "group": args.group, "head_dim": args.head_dim, "dtype": str(args.dtype),
    }
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability()
        header["capability"] = 10 * major + minor
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for batch in args.batch:
        for context in args.context:
            rows += run_case(batch, context, args, device, gen, peak)
            write_report(args.out, header, rows, started, args.head_dim)  # a run cut short keeps its cases
    print_table(rows)
    print(f"wrote {args.out}")


def write_report(path: Path, header: dict, rows: list[dict], started: float, head_dim: int) -> None:
    report = {**header, "seconds": time.time() - started, "rows": rows}
    tuned = best_tiles(rows)
    if tuned:
        tiles, report["tile_slowdown_sums"] = tuned
        report["tiles"] = decode_tiles.tiles_entry({head_dim: tiles})  # what a tuned file is read for
        print(f"tuned decode tiles for head_dim {head_dim}: {tiles.name} "
              f"(summed slowdown {report['tile_slowdown_sums'][tiles.name]:.3f} over the cases timed)", flush=True)
    path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
