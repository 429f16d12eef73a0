"""KV capacity at equal memory: breccia FP8 KV vs SGLang's BF16 and per-tensor FP8 KV.

Each configuration starts the real engine (CPU, the breccia FP8 demo model) with the same
``max_total_tokens`` and reads SGLang's own report of the pool it built:
``get_server_info()["max_total_num_tokens"]`` and ``internal_states[0].memory_usage.kvcache``
(GiB). Tokens that fit per GiB = tokens / kvcache; the capacity gain is that ratio over BF16's.

Bound for one (token, layer, kv head) with head_dim D:
    BF16:         2 (K, V) * D * 2 bytes
    breccia FP8:  2 * D * 1 byte + 2 * 4 bytes (one fp32 scale each for K and V)
    gain = 4D / (2D + 8) = 2D / (D + 4)      (1.88x at D=64, 1.94x at D=128)
SGLang's per-tensor FP8 KV has no per-token scales: 2x, but see bench_kv_accuracy.py.

    python benchmarks/bench_kv_capacity.py [--tokens 65536] [--out benchmarks/out/kv_capacity.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import OUT_DIR, report_header, run_engine
from breccia_sglang import names

CONFIGS = {
    # name: (Engine kwargs beyond the common ones, environment)
    "SGLang BF16 KV": ({"kv_cache_dtype": "bf16"}, {}),
    "SGLang FP8 KV (per-tensor, scale 1.0)": ({"kv_cache_dtype": "fp8_e4m3"}, {}),
    "breccia FP8 KV (per token, head)": ({}, {}),
}


def measure(model: Path, tokens: int) -> list[dict]:
    rows = []
    for name, (kwargs, env) in CONFIGS.items():
        spec = {"env": env, "requests": [],
                "engine": {"model_path": str(model), "quantization": names.QUANT_METHOD,
                           "max_total_tokens": tokens, "log_level": "error", **kwargs}}
        with tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()
            result = run_engine(spec, tmp)
        if not result["ok"]:
            raise RuntimeError(f"{name}: {result['error']}")
        kv_gib = float(result["memory_usage"]["kvcache"])
        rows.append({"config": name, "max_total_num_tokens": result["max_total_num_tokens"], "kvcache_gib": kv_gib,
                     "tokens_per_gib": result["max_total_num_tokens"] / kv_gib,
                     "engine_start_s": round(time.monotonic() - started, 1)})
        print(f"{name:40s} tokens={rows[-1]['max_total_num_tokens']}  kv={kv_gib:.3f} GiB", flush=True)
    base = rows[0]["tokens_per_gib"]
    for row in rows:
        row["gain_vs_bf16"] = row["tokens_per_gib"] / base
    return rows


def plot(rows, bound, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [r["config"] for r in rows]
    ax.barh(names, [r["gain_vs_bf16"] for r in rows], color=["#888", "#d62728", "#2ca02c"])
    ax.axvline(bound, ls="--", c="k", lw=1, label=f"2D/(D+4) = {bound:.3f}")
    for i, r in enumerate(rows):
        ax.text(r["gain_vs_bf16"] + 0.02, i, f"{r['gain_vs_bf16']:.3f}x", va="center")
    ax.set_xlabel("KV tokens per GiB, relative to BF16 KV (engine-reported)")
    ax.set_xlim(0, 2.4)
    ax.invert_yaxis()
    ax.legend(loc="upper right")  # the short BF16 bar leaves that corner free
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=65536, help="max_total_tokens for every config")
    parser.add_argument("--model", type=Path, help="breccia checkpoint (default: the demo model's breccia FP8)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "kv_capacity.json", help="JSON path; the PNG goes beside it")
    args = parser.parse_args(argv)

    from breccia_sglang.harness.demo import quantized_demo_model

    model = args.model or quantized_demo_model("fp8")
    config = json.loads((model / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    bound = 2 * head_dim / (head_dim + 4)
    rows = measure(model, args.tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {**report_header("kv_capacity", args, argv), "head_dim": head_dim, "bound_2d_over_d_plus_4": bound,
              "rows": rows}
    args.out.write_text(json.dumps(report, indent=2))
    plot(rows, bound, args.out.with_suffix(".png"))
    print(f"\nhead_dim {head_dim}: bound 2D/(D+4) = {bound:.4f}")
    for r in rows:
        print(f"{r['config']:40s} {r['tokens_per_gib']:10.0f} tokens/GiB  {r['gain_vs_bf16']:.4f}x BF16")


if __name__ == "__main__":
    main()
