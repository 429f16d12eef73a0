"""Fused MoE: breccia FP8 (1x128), INT4 (group 128) and NVFP4 experts on SGLang's fused MoE Triton
kernels and on our MoE W4A16 / W8A16 kernels, against SGLang's kernel on BF16 experts, side by side, at
Qwen3-30B-A3B's MoE shapes.

GPU (the numbers the MoE issue asks for):
    python benchmarks/bench_moe.py                       # batch 1, 16, 64, 256
    python benchmarks/bench_moe.py --batch 1 16

CPU smoke run (TRITON_INTERPRET=1 is set for you; correctness only, no timings):
    python benchmarks/bench_moe.py --smoke

Shape: 128 experts, top-8 routing, hidden 2048, expert intermediate 768 (smoke: 4 experts, top-2,
128 x 128). One MoE layer = the gate/up GEMM over every routed (token, expert) pair, SiLU-and-mul,
the down GEMM weighted by the router, summed over the token's experts; the routing is random and
the same for every variant. Variants:
  bf16        SGLang's fused_moe_kernel on BF16 experts (SGLang's unquantized Triton MoE)
  fp8-1x128   breccia block FP8 experts, 1x128 scales, W8A8 on the same kernel (triton-fused-moe)
  int4-g128   breccia symmetric INT4 experts, group 128, W4A16 on fused_moe_kernel_gptq_awq
              (triton-moe-wna16, SGLang's; served only when asked for by name)
  int4-g128-w4a16  the same INT4 experts on our MoE W4A16 kernel (triton-moe-w4a16, what serves)
  nvfp4-w4a16 NVFP4 experts (E2M1 codes, E4M3 scales per 16) on our MoE W4A16 kernel
  fp8-1x128-w8a16  the FP8 experts on our MoE W8A16 kernel (triton-moe-w8a16: what serves them on
              sm_80 / sm_86; on sm_89+ when asked for by name), activations unquantized
Each variant's weights are prepared exactly as the serving kernel prepares them; every variant,
BF16 included, runs our tile configs (``moe_tile_config``; SGLang's own config lookup needs its
runtime context, which a bare GPU machine lacks); ours run ``experts_layer``, the serving kernel's
layer. SGLang's kernels are called through ``invoke_fused_moe_kernel``; every variant takes the
routed pairs aligned in torch (``align_routed_pairs``: SGLang's CUDA align op is not on a
bare GPU machine), once per routing, outside the timing, the same for every variant. FP8 activations
are quantized per token and 128-wide group in torch inside the timing (an upper bound: SGLang's CUDA
quantization kernel is faster). Every variant is checked against an fp32 torch MoE on its own
dequantized experts first. Timing: the layer replayed in a CUDA graph, as SGLang runs decode
(``_gpu_timing``; eagerly where it cannot be captured, and the row says so). TB/s counts the bytes of the
experts that are routed at least one token, their scales included.

Targets (H100 / H200): FP8 >= 1.4x BF16 and INT4 (as served) >= 2x BF16 at batch <= 16.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton compiles anything

import torch
import torch.nn.functional as F

from _common import OUT_DIR, error_summary, report_header, sglang_kernel_module
from _gpu_timing import time_us
from breccia_sglang.integration.moe.align import align_routed_pairs, routed_blocks
from breccia_sglang.integration.moe.params import StoredExperts
from breccia_sglang.integration.moe.routed_experts import experts_layer
from breccia_sglang.integration.moe.triton_fused import MAX_TILE_K, moe_tile_config
from breccia_sglang.integration.moe.triton_w4a16 import w4a16_experts
from breccia_sglang.integration.moe.triton_w8a16 import w8a16_experts
from breccia_sglang.kernels.gemm import choose_moe_config, choose_moe_w8a16_config
from breccia_sglang.kernels.gemm.reference import w4a16_weight
from breccia_sglang.weights import quantize_activations_fp8
from breccia_sglang.weights.packing import pack_low_first

SHAPE = {"experts": 128, "top_k": 8, "hidden": 2048, "inter": 768}  # Qwen3-30B-A3B
SMOKE_SHAPE = {"experts": 4, "top_k": 2, "hidden": 128, "inter": 128}
BLOCK = 128  # FP8 scale blocks and INT4 groups
BASELINE = "bf16"
TARGETS = {"fp8-1x128": 1.4, "int4-g128-w4a16": 2.0}  # speed-up over BF16 at batch <= 16
# our variants: (their tile config, their GEMM over the stacked experts), as the serving kernels choose them
OURS = {
    "int4-g128-w4a16": (choose_moe_config, lambda *operands: w4a16_experts(*operands, group=BLOCK, codes="int4")),
    "nvfp4-w4a16": (choose_moe_config, lambda *operands: w4a16_experts(*operands, group=16, codes="e2m1")),
    "fp8-1x128-w8a16": (choose_moe_w8a16_config, lambda *operands: w8a16_experts(*operands, group=BLOCK)),
}


def random_experts(e: int, n: int, k: int, gen, device) -> dict:
    """One stacked weight in every variant's layout, plus what each dequantizes to (fp32).
    FP8: codes of a per-row, per-128 cast; INT4 and NVFP4: random codes and group scales
    (breccia's cast goes through NumPy, far too slow for 128 x 1536 x 2048, and speed does not
    depend on values); NVFP4's E4M3 scale codes 0x10..0x1f are 2^-5 .. 0.24."""
    w = torch.randn(e, n, k, generator=gen, device=device) * 0.02
    blocks = w.view(e, n, k // BLOCK, BLOCK)
    fp8_scale = blocks.abs().amax(-1).clamp(min=1e-12) / 448.0
    fp8 = (blocks / fp8_scale[..., None]).view(e, n, k).to(torch.float8_e4m3fn)
    codes = torch.randint(0, 16, (e, n, k), generator=gen, device=device, dtype=torch.int32).to(torch.uint8)
    int4_scale = torch.rand(e, n, k // BLOCK, generator=gen, device=device) * 0.004 + 0.001
    signed = ((codes.to(torch.int32) ^ 8) - 8).float()  # two's complement nibbles
    fp4_scale = torch.randint(0x10, 0x20, (e, n, k // 16), generator=gen, device=device, dtype=torch.int32)
    fp4_scale = fp4_scale.to(torch.uint8)
    return {
        "bf16": (w.to(torch.bfloat16), w),
        "fp8": (fp8, fp8_scale, (fp8.float().view_as(blocks) * fp8_scale[..., None]).view(e, n, k)),
        # the wna16 kernel reads u - 8: signed codes become u = code ^ 8 (as TritonMoEWna16Kernel does)
        "int4": (pack_low_first(codes) ^ 0x88, int4_scale,
                 (signed.view_as(blocks) * int4_scale[..., None]).view(e, n, k)),
        # our kernel reads the two's complement nibbles as they are stored
        "int4-codes": (pack_low_first(codes), int4_scale,
                       (signed.view_as(blocks) * int4_scale[..., None]).view(e, n, k)),
        "nvfp4": (pack_low_first(codes), fp4_scale,
                  w4a16_weight(pack_low_first(codes).view(e * n, k // 2), fp4_scale.view(e * n, k // 16), None,
                               group=16, codes="e2m1").view(e, n, k)),
    }


def moe_layer(x, w13, w2, topk_weights, topk_ids, aligned, invoke, variant: str, interpreted: bool):
    """One MoE layer with SGLang's fused kernels: (M, H) -> (M, H)."""
    import triton.language as tl

    m, top_k = topk_ids.shape
    sorted_ids, expert_ids, padded, config = aligned
    compute = tl.float16 if x.dtype == torch.float16 else tl.bfloat16

    def gemm(a, weights, out_n, top, routed_weight):
        out = torch.empty(m, top_k, out_n, dtype=x.dtype, device=x.device)  # one row per routed pair
        a_scale, kwargs = None, {}
        if variant.startswith("fp8"):
            a, a_scale = quantize_activations_fp8(a, BLOCK)
            kwargs = {"use_fp8_w8a8": True, "block_shape": [1, BLOCK]}
        elif variant.startswith("int4"):
            kwargs = {"use_int4_w4a16": True, "block_shape": [0, BLOCK]}
        flags = {"use_fp8_w8a8": False, "use_int8_w8a8": False, "use_int8_w8a16": False, "use_int4_w4a16": False,
                 "per_channel_quant": False, "block_shape": None} | kwargs
        weight, scale = weights if isinstance(weights, tuple) else (weights, None)
        invoke(a, weight, None, out, a_scale, scale, None, topk_weights, topk_ids, sorted_ids, expert_ids, padded,
               routed_weight, top, config, compute, **flags)
        return out

    gate_up = gemm(x, w13, w13[0].shape[1] if isinstance(w13, tuple) else w13.shape[1], top_k, False)
    inter = gate_up.shape[-1] // 2
    act = (F.silu(gate_up[..., :inter].float()) * gate_up[..., inter:].float()).to(x.dtype).view(m * top_k, inter)
    down = gemm(act, w2, x.shape[1], 1, True)
    return down.sum(dim=1)


def reference(x, w13, w2, topk_weights, topk_ids):
    """fp32 MoE on dequantized experts, expert by expert."""
    m, top_k = topk_ids.shape
    out = torch.zeros(m, w2.shape[1], device=x.device)
    for e in topk_ids.unique().tolist():
        token, slot = (topk_ids == e).nonzero(as_tuple=True)
        h = x[token].float() @ w13[e].T
        inter = h.shape[-1] // 2
        y = (F.silu(h[:, :inter]) * h[:, inter:]) @ w2[e].T
        out.index_add_(0, token, y * topk_weights[token, slot, None])
    return out


def run_batch(m: int, shape: dict, experts: dict, device, gen, invoke, interpreted: bool) -> list[dict]:
    e, top_k, hidden, inter = shape["experts"], shape["top_k"], shape["hidden"], shape["inter"]
    x = torch.randn(m, hidden, generator=gen, device=device).to(torch.float16 if interpreted else torch.bfloat16)
    logits = torch.randn(m, e, generator=gen, device=device)
    topk_weights, topk_ids = torch.topk(logits.softmax(-1), top_k)
    topk_ids = topk_ids.to(torch.int32)
    routed = topk_ids.unique().numel()
    rows = []
    for variant, (key, weights_bytes) in {
        # bytes per weight, scales included: FP8 one fp32 per 128, INT4 one per 128, NVFP4 one byte per 16
        "bf16": ("bf16", 2), "fp8-1x128": ("fp8", 1 + 4 / 128), "int4-g128": ("int4", 0.5 + 4 / 128),
        "int4-g128-w4a16": ("int4-codes", 0.5 + 4 / 128), "nvfp4-w4a16": ("nvfp4", 0.5 + 1 / 16),
        "fp8-1x128-w8a16": ("fp8", 1 + 4 / 128),
    }.items():
        row = {"variant": variant, "batch": m, "routed_experts": routed}
        if key == "bf16":  # the 16-bit baseline in x's dtype: BF16 on a GPU, fp16 in --smoke (bf16 tl.dot is broken there)
            w13, w2 = (experts[w]["bf16"][0].to(x.dtype) for w in ("w13", "w2"))
            w13_ref, w2_ref = (experts[w]["bf16"][0].float() for w in ("w13", "w2"))
        else:
            w13, w2 = experts["w13"][key][:2], experts["w2"][key][:2]
            w13_ref, w2_ref = experts["w13"][key][-1], experts["w2"][key][-1]
        if variant in OURS:  # the serving kernel's layer, config and blocks; aligned outside the timing
            choose, experts_gemm = OURS[variant]
            config = choose(topk_ids.numel(), e, x)
            blocks = routed_blocks(topk_ids, config.block_m, e, use_sglang=False)
            stored = [StoredExperts(*w, zero_point=None, shard_widths=None) for w in (w13, w2)]
            gemm = experts_gemm(*stored, blocks, config)
            run = lambda: experts_layer(x, topk_weights, gemm, activation="silu")  # noqa: E731
        else:
            # the serving kernels' configs: INT4's K tile is capped lower (its shared memory)
            config = moe_tile_config(topk_ids.numel(), BLOCK, interpreted,
                                     MAX_TILE_K["w4a16" if key == "int4" else "w8a8"])
            aligned = (*align_routed_pairs(topk_ids, config["BLOCK_SIZE_M"], e), config)  # outside the timing
            run = lambda: moe_layer(x, w13, w2, topk_weights, topk_ids, aligned, invoke, variant,  # noqa: E731
                                    interpreted)
        try:
            out = run().float()
            ref = reference(x, w13_ref, w2_ref, topk_weights, topk_ids)
            row["rel_err"] = float((out - ref).norm() / ref.norm())
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run here is reported
            row["error"] = error_summary(exc)
            rows.append(row)
            continue
        if device.type == "cuda":
            us, row["timing"] = time_us([run])  # the experts (GBs) are far over L2: one copy
            moved = routed * 3 * hidden * inter * weights_bytes + m * hidden * 4
            row.update(time_us=us, tbps=moved / (us * 1e-6) / 1e12)
        rows.append(row)
    base = next((r for r in rows if r["variant"] == BASELINE and "time_us" in r), None)
    for r in rows:
        if base and "time_us" in r:
            r["speedup_vs_bf16"] = base["time_us"] / r["time_us"]
    return rows


# Relative error against the fp32 MoE on the same dequantized experts: W8A8 quantizes both GEMMs'
# activations (a few percent on random data); W4A16 and BF16 round each weight and output once.
MAX_REL_ERR = {"bf16": 1e-2, "fp8-1x128": 8e-2, "int4-g128": 1e-2, "int4-g128-w4a16": 1e-2, "nvfp4-w4a16": 1e-2,
               "fp8-1x128-w8a16": 1e-2}


def target_checks(rows: list[dict]) -> list[str]:
    """The MoE issue's targets, each with the measured value: PASS / FAIL lines."""
    wrong = [r for r in rows if "error" in r or r["rel_err"] > MAX_REL_ERR[r["variant"]]]
    lines = [f"{'PASS' if not wrong else 'FAIL'} every variant correct against fp32: "
             + (", ".join(f"{r['variant']} batch {r['batch']}" for r in wrong) or "all")]
    for variant, target in TARGETS.items():
        small = [r["speedup_vs_bf16"] for r in rows if r["variant"] == variant and r["batch"] <= 16
                 and "speedup_vs_bf16" in r]
        if small:
            lines.append(f"{'PASS' if min(small) >= target else 'FAIL'} {variant} >= {target}x BF16 at batch <= 16: "
                         f"min {min(small):.2f}x")
    return lines


def print_table(rows: list[dict]) -> None:
    print(f"{'batch':>5} {'variant':15} {'experts':>7} {'rel err':>8} {'time us':>9} {'TB/s':>6} {'vs bf16':>7}")
    for r in rows:
        head = f"{r['batch']:5d} {r['variant']:15} {r['routed_experts']:7d}"
        if "error" in r:
            print(f"{head} failed: {r['error']}")
        elif "time_us" in r:
            print(f"{head} {r['rel_err']:8.1e} {r['time_us']:9.1f} {r['tbps']:6.2f} {r['speedup_vs_bf16']:7.2f}")
        else:
            print(f"{head} {r['rel_err']:8.1e}   n/a (CPU: correctness only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, correctness only (TRITON_INTERPRET=1)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "moe.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        sys.exit("no GPU here: timings need CUDA (use --smoke for a CPU correctness run)")
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    batches = [1, 7] if args.smoke else args.batch
    started = time.time()
    try:
        invoke = sglang_kernel_module("sglang.kernels.ops.moe.fused_moe_triton_kernels").invoke_fused_moe_kernel
    except Exception as exc:  # noqa: BLE001 - nothing to time without SGLang's kernels: say why
        sys.exit(f"SGLang's fused MoE kernels do not import here: {error_summary(exc)}")
    gen = torch.Generator(device=device).manual_seed(0)
    e, hidden, inter = shape["experts"], shape["hidden"], shape["inter"]
    experts = {"w13": random_experts(e, 2 * inter, hidden, gen, device), "w2": random_experts(e, hidden, inter, gen, device)}
    rows = []
    for m in batches:
        print(f"  batch {m}", flush=True)
        rows += run_batch(m, shape, experts, device, gen, invoke, interpreted=args.smoke)
    print_table(rows)
    checks = target_checks(rows)
    for line in checks:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {**report_header("moe", args), "shape": shape,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU, TRITON_INTERPRET=1",
              "targets": checks, "seconds": time.time() - started, "rows": rows}
    args.out.write_text(json.dumps(report, indent=1,
                                   default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
