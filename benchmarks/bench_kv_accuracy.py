"""KV cache accuracy: per-(token, head) FP8 (ours) vs SGLang's per-tensor FP8 (scale 1.0).

What is measured
----------------
Attention outputs computed in fp32 with K/V taken four ways; Q and the attention
math stay fp32 everywhere, so the only difference is how K and V are stored:

  oracle         K, V exactly (fp32).
  ours           dequantize_kv(*quantize_kv(x)): e4m3 with one scale per (token, kv head),
                 scale = amax(|x[t, h, :]|) / 448.
  sglang_scale1  x.to(float8_e4m3fn) -> fp32. SGLang 0.5.23's FP8 KV divides by a static
                 per-tensor k_scale/v_scale that is 1.0 when the checkpoint has none, then
                 casts with no clamp (MHATokenToKVPool.set_kv_buffer).
  sglang_amax    (second baseline, labelled as such) one per-tensor scale = amax(|x|) / 448
                 calibrated on the very tensor being stored: an optimistic bound for a static
                 per-tensor scale shipped in a checkpoint.
  bf16           reference only: the usual unquantized cache, to show what the target asks of
                 any 8-bit format.

    attn(q, K, V) = softmax(q K^T / sqrt(D)) V          (GQA: q head h reads kv head h // (Hq/Hkv))

Per case, with o = attn on the oracle K/V and o' = attn on a method's K/V, rows = (query, head):
    cos      = <o, o'> / (|o| |o'|)   per row;  reported as min and mean over rows
    rel_l2   = ||o' - o||_F / ||o||_F over the whole case
    ratio    = rel_l2(sglang_scale1) / rel_l2(ours)    (> 1: ours is more accurate)
    frac_cos_ok = share of rows with cos >= 0.9995
Ours is also run with only K (only V) quantized, to show which path carries its error.
Cast statistics of the scale-1.0 baseline: "clipped" = elements with |x| > 448,
"flushed" = nonzero elements that become 0 in e4m3 (|x| < 2^-10).

Cases
-----
1. Synthetic decode (16 query vectors per head, each attending the whole context):
   Hq = 9 query heads over Hkv = 3 kv heads, D in {64, 128}, context T in {97, 1024, 4096}.
   "outlier keys": K ~ N(0, 1) with 4 fixed channels per kv head carrying a fixed sign and
   a magnitude drawn per (token, head) log-uniformly in [10, 100]; 1/8 of the (token, head)
   rows are shrunk by 100x (quiet tokens). V, q ~ N(0, 1).
   "outlier keys +400": the same keys with a constant +-400 added to the outlier channels
   (like a k_proj bias). Softmax ignores a per-query constant, so the oracle output is the
   same as without it, but the channels now reach 410..500: past e4m3's largest finite value
   448 for the scale-1.0 cast, and into e4m3's coarse top binade (step 32 x scale) for every
   FP8 scheme (an extra, clearly labelled case: large-magnitude keys).
2. Real K/V: SmolLM2-135M-Instruct (30 layers, 9 q heads, 3 kv heads, D = 64) in fp32 over a
   fixed English paragraph; post-RoPE K/V from the returned DynamicCache, post-RoPE Q from a
   hook on q_proj + the model's own rotary embedding. Causal attention at every position,
   every layer. (SGLang would cast bf16 K/V rather than fp32; bf16's 8 mantissa bits add
   little next to e4m3's 3.) The reconstruction is checked against the layer's own
   attention output (the input of o_proj) before anything is reported.

Target (project): cos >= 0.9995 vs the oracle for ours, and clearly better than
sglang_scale1 on outlier-heavy keys.

Run:  python benchmarks/bench_kv_accuracy.py      (CPU, about a minute)
Writes benchmarks/out/kv_accuracy.json and benchmarks/out/kv_accuracy.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from breccia_sglang.paged.kv_quant import FP8, dequantize_kv, quantize_kv

FP8_MAX = 448.0  # largest finite float8_e4m3fn
TARGET_COS = 0.9995
NUM_Q_HEADS, NUM_KV_HEADS = 9, 3  # SmolLM2-135M's GQA shape, reused for the synthetic cases
SYNTH_HEAD_DIMS = (64, 128)
SYNTH_CONTEXTS = (97, 1024, 4096)  # 97: not a multiple of any page size
SYNTH_QUERIES = 16

# A fixed real paragraph (written for this benchmark), a few hundred tokens.
PARIS_TEXT = (
    "Paris began as a small settlement of the Parisii, a Celtic tribe that lived on an island in the "
    "river Seine more than two thousand years ago. The Romans conquered the area in 52 BC and built a "
    "town they called Lutetia, with a forum, baths and an amphitheatre on the left bank. In the late "
    "fifth century Clovis, king of the Franks, made the city his capital, and over the following "
    "centuries it grew into one of the largest cities in Europe. During the Middle Ages the cathedral "
    "of Notre-Dame was built on the Ile de la Cite, and the university on the left bank drew students "
    "from across the continent. King Philip Augustus surrounded the city with a wall and began the "
    "fortress of the Louvre, which later became a royal palace and, after the Revolution, a museum. "
    "The Revolution of 1789 started in Paris with the storming of the Bastille, and the city remained "
    "at the centre of French political life through the empires and republics that followed. In the "
    "middle of the nineteenth century Baron Haussmann, working for Napoleon III, tore down crowded "
    "medieval quarters and laid out the wide boulevards, parks and sewers that still shape the city. "
    "The Eiffel Tower was completed for the World's Fair of 1889 and, although many artists first "
    "called it ugly, it soon became the best known symbol of Paris. Occupied by German troops in 1940, "
    "the city was liberated in August 1944, and today it is a centre of art, fashion, science and "
    "government, visited by tens of millions of people every year."
)


# --- the ways K/V reach attention: (T, H, D) float -> (T, H, D) fp32 ---------------------

def kv_ours(x: torch.Tensor) -> torch.Tensor:
    return dequantize_kv(*quantize_kv(x))


def kv_sglang_scale1(x: torch.Tensor) -> torch.Tensor:
    # SGLang does x.div_(1.0).to(float8_e4m3fn) with no clamp. What the cast does beyond 448
    # depends on torch: this torch (2.14) saturates finite overflow and +-inf to +-448 (c10
    # Float8_e4m3fn.h, pytorch#178817, April 2026); older torch's C++ cast mapped |x| >= 480
    # to NaN, which would poison every query head reading that kv head. We model the torch
    # that runs here and count the clipped elements so the older behaviour can be read off.
    return x.to(FP8).to(torch.float32)


def kv_sglang_amax(x: torch.Tensor) -> torch.Tensor:
    scale = x.abs().amax().clamp_min(torch.finfo(torch.float32).tiny) / FP8_MAX
    return (x / scale).to(FP8).to(torch.float32) * scale


def kv_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


# bf16 is not a contender: it is the usual unquantized cache, shown to calibrate the target.
METHODS = {"ours": kv_ours, "sglang_scale1": kv_sglang_scale1, "sglang_amax": kv_sglang_amax, "bf16": kv_bf16}


def cast_stats(x: torch.Tensor) -> dict:
    """What the scale-1.0 cast does to x: elements clipped at 448 and nonzeros flushed to 0."""
    q = x.to(FP8).to(torch.float32)
    return {
        "clipped": int((x.abs() > FP8_MAX).sum()),
        "flushed": int(((x != 0) & (q == 0)).sum()),
        "numel": x.numel(),
    }


# --- attention and metrics ---------------------------------------------------------------

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v in fp32.

    q : (Tq, Hq, D); k, v : (T, Hkv, D). With ``causal``, query i sits at position i
    (Tq == T); without, every query sees the whole context (decode). Returns (Tq, Hq, D).
    """
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # q head h reads kv head h // group (Llama layout)
    v = v.repeat_interleave(group, dim=1)
    logits = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        future = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
    return torch.einsum("hqk,khd->qhd", logits.softmax(dim=-1), v)


def compare(ref: torch.Tensor, out: torch.Tensor) -> dict:
    cos = F.cosine_similarity(out, ref, dim=-1)  # one value per (query, head); NaN propagates
    return {
        "cos_min": cos.min().item(),
        "cos_mean": cos.mean().item(),
        "frac_cos_ok": (cos >= TARGET_COS).float().mean().item(),  # share of rows meeting the target
        "rel_l2": ((out - ref).norm() / ref.norm()).item(),
        "err_sq": (out - ref).pow(2).sum().item(),  # kept to pool rel_l2 over layers
        "ref_sq": ref.pow(2).sum().item(),
    }


def run_methods(q, k, v, causal) -> dict:
    ref = attention(q, k, v, causal)
    results = {}
    for name, through_cache in METHODS.items():
        results[name] = compare(ref, attention(q, through_cache(k), through_cache(v), causal))
    # Where ours loses accuracy: K alone (through the softmax) or V alone (linear in the output).
    results["ours_rel_l2_k_only"] = compare(ref, attention(q, kv_ours(k), v, causal))["rel_l2"]
    results["ours_rel_l2_v_only"] = compare(ref, attention(q, k, kv_ours(v), causal))["rel_l2"]
    results["ratio"] = ratio(results)
    return results


def pooled(results: list[dict]) -> dict:
    """compare() results of several layers as one: worst min cos, mean of the mean cos, and
    rel L2 over all of their outputs together."""
    return {
        "cos_min": min(r["cos_min"] for r in results),
        "cos_mean": sum(r["cos_mean"] for r in results) / len(results),
        "rel_l2": math.sqrt(sum(r["err_sq"] for r in results) / sum(r["ref_sq"] for r in results)),
    }


def ratio(results: dict) -> float:
    ours = results["ours"]["rel_l2"]
    return results["sglang_scale1"]["rel_l2"] / ours if ours > 0 else float("inf")


# --- case 1: synthetic outlier keys --------------------------------------------------------

def outlier_keys(tokens: int, heads: int, dim: int, gen: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """(T, H, D) keys: N(0, 1), 4 fixed outlier channels per head (fixed sign, magnitude
    log-uniform in [10, 100] per (token, head, channel)), 1/8 of (token, head) rows x 0.01;
    then ``offset`` (same sign) added to every token's outlier channels."""
    k = torch.randn(tokens, heads, dim, generator=gen)
    bias = torch.zeros(heads, dim)
    for h in range(heads):
        channels = torch.randperm(dim, generator=gen)[:4]
        sign = torch.randint(0, 2, (4,), generator=gen).float() * 2 - 1
        magnitude = 10 ** (1 + torch.rand(tokens, 4, generator=gen))
        k[:, h, channels] = sign * magnitude
        bias[h, channels] = sign * offset
    quiet = torch.rand(tokens, heads, 1, generator=gen) < 1 / 8
    return torch.where(quiet, k * 0.01, k) + bias


def synthetic_qkv(dim: int, tokens: int, offset: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One synthetic decode case: q (SYNTH_QUERIES, NUM_Q_HEADS, D), outlier keys and N(0, 1)
    values (T, NUM_KV_HEADS, D). Seeded by (D, T) only, so both families share their keys."""
    gen = torch.Generator().manual_seed(1000 * dim + tokens)
    k = outlier_keys(tokens, NUM_KV_HEADS, dim, gen, offset)
    v = torch.randn(tokens, NUM_KV_HEADS, dim, generator=gen)
    q = torch.randn(SYNTH_QUERIES, NUM_Q_HEADS, dim, generator=gen)
    return q, k, v


def synthetic_cases() -> list[dict]:
    rows = []
    for family, offset in (("outlier keys", 0.0), ("outlier keys +400", 400.0)):
        for dim in SYNTH_HEAD_DIMS:
            for tokens in SYNTH_CONTEXTS:
                q, k, v = synthetic_qkv(dim, tokens, offset)
                rows.append({
                    "case": f"{family}, D={dim}, T={tokens}",
                    "family": family, "head_dim": dim, "context": tokens,
                    "q_heads": NUM_Q_HEADS, "kv_heads": NUM_KV_HEADS, "queries": SYNTH_QUERIES,
                    "k_cast": cast_stats(k), "v_cast": cast_stats(v),
                    **run_methods(q, k, v, causal=False),
                })
    return rows


# --- case 2: real K/V of the demo model ----------------------------------------------------

def capture_demo_qkv(model_dir: Path):
    """Run SmolLM2 in fp32 over PARIS_TEXT; return per-layer post-RoPE (q, k, v) as
    (T, H, D) tensors and each layer's attention output before o_proj, (T, Hq * D)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(PARIS_TEXT, return_tensors="pt").input_ids
    layers = model.model.layers
    head_dim = model.config.head_dim
    q_raw, attn_out, hooks = {}, {}, []
    for i, layer in enumerate(layers):
        hooks.append(layer.self_attn.q_proj.register_forward_hook(
            lambda mod, inp, out, i=i: q_raw.__setitem__(i, out.detach())))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda mod, inp, i=i: attn_out.__setitem__(i, inp[0].detach())))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        positions = torch.arange(ids.shape[1])[None]
        cos, sin = model.model.rotary_emb(q_raw[0], positions)
    for h in hooks:
        h.remove()

    captured = []
    for i in range(len(layers)):
        q = q_raw[i].view(1, ids.shape[1], -1, head_dim).transpose(1, 2)  # (1, Hq, T, D)
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        captured.append({
            "q": q[0].transpose(0, 1).contiguous(),  # (T, Hq, D)
            "k": cache.layers[i].keys[0].transpose(0, 1).contiguous(),  # (T, Hkv, D), post-RoPE
            "v": cache.layers[i].values[0].transpose(0, 1).contiguous(),
            "attn_out": attn_out[i][0],  # (T, Hq * D)
        })
    return captured, ids.shape[1], model.config


def demo_model_case(model_dir: Path) -> dict:
    captured, tokens, config = capture_demo_qkv(model_dir)
    layers = []
    for i, c in enumerate(captured):
        ref = attention(c["q"], c["k"], c["v"], causal=True)
        # The captured Q/K/V must reproduce the model's own attention (sdpa, fp32) or
        # nothing below means anything.
        recon = ((ref.flatten(1) - c["attn_out"]).norm() / c["attn_out"].norm()).item()
        if recon > 1e-4:
            raise RuntimeError(f"layer {i}: Q/K/V capture does not reproduce attention (rel err {recon:.2e})")
        layers.append({"layer": i, "reconstruction_rel_err": recon,
                       "k_cast": cast_stats(c["k"]), "v_cast": cast_stats(c["v"]),
                       "k_amax": c["k"].abs().max().item(), "v_amax": c["v"].abs().max().item(),
                       **run_methods(c["q"], c["k"], c["v"], causal=True)})
    overall = {name: pooled([layer[name] for layer in layers]) for name in METHODS}
    overall["ratio"] = ratio(overall)
    return {
        "model": str(model_dir), "tokens": tokens, "layers_count": len(layers),
        "q_heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
        "head_dim": config.head_dim, "text": PARIS_TEXT,
        "overall": overall, "layers": layers,
    }


# --- report --------------------------------------------------------------------------------

def fmt_row(name: str, r: dict, extra: str = "") -> str:
    o, s, a, b = r["ours"], r["sglang_scale1"], r["sglang_amax"], r["bf16"]
    return (f"{name:<34} {o['cos_min']:9.6f} {o['cos_mean']:.6f}  {s['cos_min']:9.6f} {s['cos_mean']:.6f}  "
            f"{a['cos_min']:9.6f} {b['cos_min']:.6f}  {o['rel_l2']:.2e} {s['rel_l2']:.2e} {a['rel_l2']:.2e} "
            f"{r['ratio']:6.2f}  {extra}")


def print_table(synth: list[dict], demo: dict) -> None:
    print(f"{'case':<34} {'ours cos min/mean':<20}{'sglang-1.0 cos min/mean':<26}{'amax/bf16 cos min':<20}"
          f"{'rel_l2 ours/sg1.0/amax':<28}{'ratio':<8}K clipped/flushed")
    for r in synth:
        kc = r["k_cast"]
        print(fmt_row(r["case"], r, f"{kc['clipped']}/{kc['flushed']} of {kc['numel']}"))
    print(fmt_row(f"SmolLM2 all {demo['layers_count']} layers", demo["overall"]))
    for layer in demo["layers"]:
        kc, vc = layer["k_cast"], layer["v_cast"]
        print(fmt_row(f"  layer {layer['layer']}", layer,
                      f"K {kc['clipped']}/{kc['flushed']}, V {vc['clipped']}/{vc['flushed']} of {vc['numel']}"))


def misses(synth: list[dict], demo: dict) -> list[str]:
    out = [r["case"] for r in synth if not r["ours"]["cos_min"] >= TARGET_COS]
    out += [f"SmolLM2 layer {layer['layer']}" for layer in demo["layers"] if not layer["ours"]["cos_min"] >= TARGET_COS]
    return out


def plot(synth: list[dict], demo: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"ours": "ours: per-(token, head) FP8", "sglang_scale1": "SGLang per-tensor FP8, scale 1.0",
              "sglang_amax": "per-tensor FP8, amax-calibrated", "bf16": "reference: BF16 (no FP8)"}
    colors = {"ours": "tab:green", "sglang_scale1": "tab:red", "sglang_amax": "tab:gray", "bf16": "tab:blue"}
    floor = 1e-9  # 1 - cos can be exactly 0; keep it on the log axis

    def gap(r, key="cos_min"):  # 1 - cosine; NaN (if a torch ever returns it) drawn at the top
        value = 1 - r[key]
        return 1.0 if value != value else max(value, floor)

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.2), gridspec_kw={"width_ratios": [1, 1.4]})
    xs = [layer["layer"] for layer in demo["layers"]]
    for name in METHODS:
        left.plot(xs, [gap(layer[name]) for layer in demo["layers"]], "o-", ms=4, color=colors[name], label=labels[name])
        left.plot(xs, [gap(layer[name], "cos_mean") for layer in demo["layers"]], ":", lw=1.2, color=colors[name])
    left.axhline(1 - TARGET_COS, color="k", ls="--", lw=1, label=f"target: cos >= {TARGET_COS}")
    left.set(yscale="log", xlabel="layer", ylabel="1 - cosine: min (solid), mean (dotted) over positions, heads",
             title=f"SmolLM2-135M real K/V, causal attention, {demo['tokens']} tokens")

    width = 0.2
    for j, name in enumerate(METHODS):
        right.bar([i + (j - 1.5) * width for i in range(len(synth))], [gap(r[name]) for r in synth],
                  width, color=colors[name], label=labels[name])
    right.axhline(1 - TARGET_COS, color="k", ls="--", lw=1)
    right.set_xticks(range(len(synth)))
    right.set_xticklabels([r["case"].replace(", ", "\n", 1) for r in synth], rotation=60, ha="right", fontsize=7)
    right.set(yscale="log", ylabel="1 - min cosine (over queries, heads)",
              title=f"synthetic decode, {NUM_Q_HEADS} q heads / {NUM_KV_HEADS} kv heads")
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=9)
    fig.suptitle("Attention-output error vs fp32 oracle (lower is better)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)


def machine_info() -> dict:
    import breccia
    import transformers
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "breccia": getattr(breccia, "__version__", "?"),
            "torch_threads": torch.get_num_threads()}


def finite_or_none(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--model", type=Path, default=None, help="HF checkpoint dir (default: the demo model)")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()

    synth = synthetic_cases()
    if args.model is None:
        from breccia_sglang.demo_model import fetch_demo_model
        args.model = fetch_demo_model()
    demo = demo_model_case(args.model)
    print_table(synth, demo)

    missed = misses(synth, demo)
    layers_missed = sum(m.startswith("SmolLM2") for m in missed)
    print(f"\ntarget min cos >= {TARGET_COS} for ours: missed in {len(missed) - layers_missed} of {len(synth)} "
          f"synthetic cases and {layers_missed} of {len(demo['layers'])} SmolLM2 layers (list in the JSON)")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "kv_accuracy",
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "machine": machine_info(),
        "target_cos": TARGET_COS,
        "target_missed_for_ours": missed,
        "methods": {name: fn.__name__ for name, fn in METHODS.items()},
        "formulas": {"cos": "<o,o'>/(|o||o'|) per (query, head)", "rel_l2": "||o'-o||_F/||o||_F",
                     "ratio": "rel_l2(sglang_scale1)/rel_l2(ours)"},
        "synthetic": synth,
        "demo_model": demo,
        "seconds": time.perf_counter() - start,
    }
    (args.out / "kv_accuracy.json").write_text(json.dumps(finite_or_none(report), indent=1))
    plot(synth, demo, args.out / "kv_accuracy.png")
    print(f"wrote {args.out / 'kv_accuracy.json'} and {args.out / 'kv_accuracy.png'} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
