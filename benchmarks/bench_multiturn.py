"""Multi-turn, shared-prefix chat throughput: breccia FP8 weights / FP8 KV vs SGLang's own.

    python benchmarks/bench_multiturn.py                       # CPU demo model, all 5 configs, ~5 min
    python benchmarks/bench_multiturn.py --configs bf16-kv,breccia-fp8-weights+breccia-fp8-kv
    python benchmarks/bench_multiturn.py --preset gpu --model ./Llama-3.1-8B-Instruct \\
        --breccia-model ./llama-breccia-fp8                    # GPU sizes (not run by this project yet)
    python benchmarks/bench_multiturn.py --url http://127.0.0.1:30000 --label my-server

Workload (like SGLang's generated-shared-prefix and multi_turn_chat benchmarks, with prose
instead of random token ids): ``--groups`` system prompts of ``--system-prompt-len`` tokens,
each shared by ``--prompts-per-group`` conversations of ``--turns`` turns. Turn 1 asks a
``--question-len``-token question; turn k+1's prompt is turn k's prompt + the answer's token
ids + a new question, so it finds turn k's KV in the radix prefix cache if the pool kept it.
Greedy (temperature 0), exactly ``--output-len`` tokens per answer (ignore_eos). Turns run
in waves (all conversations' turn k, at most ``--concurrency`` requests at once, then turn
k+1), so per-turn numbers are each wave's own. Same ``--seed``, same prompts; from turn 2 on
prompts carry each config's own answers.

Configurations (each its own engine process, one after another so they do not share cores):
    bf16-kv                              --model, SGLang's KV cache in the model dtype
    sglang-fp8-kv                        --model, kv_cache_dtype="fp8_e4m3" (per-tensor, scale 1.0)
    breccia-fp8-weights+bf16-kv          --breccia-model, BRECCIA_SGLANG_FP8_KV=0
    breccia-fp8-weights+sglang-fp8-kv    --breccia-model, kv_cache_dtype="fp8_e4m3" (SGLang's FP8 KV)
    breccia-fp8-weights+breccia-fp8-kv   --breccia-model, quantization="breccia" (its default KV)
The model dtype is ``--dtype`` (bfloat16 by default), so "bf16-kv" is BF16 everywhere. SGLang's
"auto" would run the fp32 demo checkpoint in float16, whose matmuls are ~4x slower than
bfloat16's on a CPU with AMX (measured on the 2-core Xeon used here); the JSON records the
dtype each engine resolved.

KV pool, ``--kv-pool equal-memory`` (default): ``--max-total-tokens`` is the BF16 pool; the
other configs get the same bytes, so FP8 pools hold more tokens. Per token, layer and KV head
(head_dim D):  BF16 2*D*2 bytes,  SGLang FP8 2*D,  breccia FP8 2*D + 2*4 (fp32 scales for K and V).
``--kv-pool equal-tokens`` gives every config ``--max-total-tokens`` slots instead.

Metrics per config, per turn and overall: req/s and output tok/s over the wave's wall time;
TTFT (send -> first streamed token) and TPOT ((last - first token) / (output tokens - 1)),
median and p99; cache hit rate = cached prompt tokens / prompt tokens (SGLang's
``meta_info["cached_tokens"]`` / ``["prompt_tokens"]``); peak KV tokens held by running
requests, and peak running / queued requests, from SGLang's own per-step log line (engine
runs log at info with ``decode_log_interval=1``); peak in-flight tokens (client side:
prompt + generated so far, summed over requests sent and not finished); SGLang's
retractions (``meta_info["num_retractions"]``: requests it pushed back when the pool ran out);
errors (a failed request ends its conversation).
Writes ``--out`` (JSON: machine, command, parameters, every request) and two PNGs beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import _multiturn_worker as worker
from _common import OUT_DIR, report_header, run_engine
from breccia_sglang import names

TASK = f"{worker.__file__}:drive_engine"  # what each configuration's engine process runs


class Config(NamedTuple):
    checkpoint: str  # "model" (--model) or "breccia" (--breccia-model)
    engine_kwargs: dict
    env: dict  # for the engine process and its schedulers
    kv_format: str  # "model" (the model dtype), "sglang-fp8" or "breccia-fp8": sizes the pool


CONFIGS = {
    "bf16-kv": Config("model", {}, {}, "model"),
    "sglang-fp8-kv": Config("model", {"kv_cache_dtype": "fp8_e4m3"}, {}, "sglang-fp8"),
    "breccia-fp8-weights+bf16-kv": Config("breccia", {"quantization": names.QUANT_METHOD}, {names.ENV_FP8_KV: "0"},
                                          "model"),
    # The same FP8 weights with SGLang's own FP8 KV: isolates what breccia's KV cache costs or
    # buys against SGLang's, with everything else equal.
    "breccia-fp8-weights+sglang-fp8-kv": Config("breccia", {"quantization": names.QUANT_METHOD,
                                                             "kv_cache_dtype": "fp8_e4m3"},
                                                {names.ENV_FP8_KV: "0"}, "sglang-fp8"),
    "breccia-fp8-weights+breccia-fp8-kv": Config("breccia", {"quantization": names.QUANT_METHOD},
                                                 {names.ENV_FP8_KV: "1"}, "breccia-fp8"),
}

PRESETS = {
    # The 135M demo model on 2 CPU cores. The last turn's working set is ~1200 tokens (2 system
    # prompts of 256 + 4 conversations of ~170 more each): over the BF16 pool (800 tokens), so
    # BF16 must evict; within the FP8 pools at equal memory (1505 and 1600 tokens).
    "cpu": {"groups": 2, "prompts_per_group": 2, "system_prompt_len": 256, "question_len": 32, "turns": 3,
            # device "": SGLang's own default, which the breccia CPU platform answers with cpu.
            "output_len": 16, "concurrency": 4, "max_total_tokens": 800, "device": "", "timeout": 900},
    # An 8B-class model on one GPU: 128 conversations, ~220k tokens of context by turn 4
    # against a 131072-token BF16 pool (16 GiB for Llama-3.1-8B), so BF16 evicts and the FP8
    # pools (~247k-262k tokens in the same bytes) keep every prefix.
    "gpu": {"groups": 8, "prompts_per_group": 16, "system_prompt_len": 2048, "question_len": 128, "turns": 4,
            "output_len": 256, "concurrency": 64, "max_total_tokens": 131072, "device": "cuda", "timeout": 3600},
}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="defaults for the options below")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    p.add_argument("--model", type=Path, help="HF checkpoint (default: the CPU demo model, fetched if missing)")
    p.add_argument("--breccia-model", type=Path, help="breccia checkpoint (default: the demo model's breccia FP8)")
    p.add_argument("--url", help="benchmark a running SGLang server (its /generate) instead of starting engines")
    p.add_argument("--label", default="server", help="config name for --url")
    for name, kind, text in (
        ("groups", int, "shared-prefix groups (one system prompt each)"),
        ("prompts-per-group", int, "conversations per group"),
        ("system-prompt-len", int, "tokens in each group's system prompt"),
        ("question-len", int, "tokens in each user question"),
        ("turns", int, "turns per conversation"),
        ("output-len", int, "tokens per answer (ignore_eos)"),
        ("concurrency", int, "requests in flight at most"),
        ("max-total-tokens", int, "KV pool slots of the BF16 configs (see --kv-pool)"),
        ("device", str, "engine device (empty: SGLang's default for this machine)"),
        ("timeout", float, "seconds per configuration"),
    ):
        p.add_argument(f"--{name}", type=kind, help=f"{text} (preset default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kv-pool", choices=("equal-memory", "equal-tokens"), default="equal-memory")
    p.add_argument("--dtype", default="bfloat16", help="model dtype for every engine (SGLang's 'auto' allowed)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sgl.Engine keyword for every config, VALUE as JSON if it parses (repeatable)")
    p.add_argument("--out", type=Path, default=OUT_DIR / "multiturn.json")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown and not args.url:
        p.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    if args.preset == "gpu" and not args.url:
        given = {"model": args.model, "breccia": args.breccia_model}
        if missing := sorted({CONFIGS[c].checkpoint for c in args.configs if not given[CONFIGS[c].checkpoint]}):
            p.error(f"--preset gpu needs {' and '.join('--' + m.replace('breccia', 'breccia-model') for m in missing)}"
                    " (the CPU demo model is too small to measure a GPU)")
    return args


def engine_extra_kwargs(pairs: list[str]) -> dict:
    extra = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            extra[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            extra[key.replace("-", "_")] = value
    return extra


# ---------------------------------------------------------------------------------------------
# KV pool sizes at equal memory
# ---------------------------------------------------------------------------------------------


def kv_bytes_per_token_head(kv_format: str, head_dim: int, dtype: str) -> int:
    """K and V bytes of one token in one layer and KV head, for each KV format."""
    model_itemsize = 4 if dtype in ("float32", "float") else 2  # "auto" resolves to 16-bit for fp32 checkpoints
    return {"model": 2 * head_dim * model_itemsize,
            "sglang-fp8": 2 * head_dim,
            "breccia-fp8": 2 * head_dim + 2 * 4}[kv_format]


def pool_tokens(config: str, args, head_dim: int) -> int:
    if args.kv_pool == "equal-tokens":
        return args.max_total_tokens
    budget = args.max_total_tokens * kv_bytes_per_token_head("model", head_dim, args.dtype)
    return budget // kv_bytes_per_token_head(CONFIGS[config].kv_format, head_dim, args.dtype)


def head_dim_of(checkpoint: Path) -> int:
    config = json.loads((checkpoint / "config.json").read_text())
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


# ---------------------------------------------------------------------------------------------
# Running one configuration
# ---------------------------------------------------------------------------------------------


def engine_spec(config: str, checkpoints: dict, args, workload: dict) -> dict:
    checkpoint = checkpoints[CONFIGS[config].checkpoint]
    engine = {"model_path": str(checkpoint), **({"device": args.device} if args.device else {}), "dtype": args.dtype,
              "max_total_tokens": pool_tokens(config, args, head_dim_of(checkpoint)),
              # One "Decode batch" line per step in the log: the engine's own count of KV tokens in use.
              "log_level": "info", "decode_log_interval": 1,
              **CONFIGS[config].engine_kwargs, **engine_extra_kwargs(args.engine_arg)}
    return {"config": config, "env": CONFIGS[config].env, "engine": engine, "workload": workload}


def run_engine_config(spec: dict, log_path: Path, timeout: float) -> dict:
    """One engine process running ``drive_engine``: its progress bar on our stdout, its stderr
    (SGLang's warnings and logs) in ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = run_engine({**spec, "task": TASK}, tmp, timeout, log_path=log_path, stdout="inherit")
        except (TimeoutError, RuntimeError) as exc:
            return {"ok": False, "error": str(exc)}
    load = engine_load_by_wave(result.pop("stderr"))
    for wave in result.get("waves", []):
        wave.update(load.get(wave["turn"], {}))
    return result


async def _run_http(args, tokenizer, workload: dict) -> dict:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_read=args.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        warmup_ids, warmup_params = worker.warmup_batch(tokenizer, workload)
        warmup = {"input_ids": warmup_ids, "sampling_params": warmup_params}
        async with session.post(args.url + "/generate", json=warmup) as response:
            response.raise_for_status()
        await worker.flush_http_cache(session, args.url)
        progress = worker.make_progress(args.label, workload)
        try:
            run = await worker.run_conversations(worker.http_stream_fn(session, args.url), tokenizer, workload,
                                                 progress)
        finally:
            progress.close()
        async with session.get(args.url + "/get_server_info") as response:
            info = await response.json()
    return {"ok": True, **run, "engine_start_s": None,
            "engine": {"max_total_num_tokens": info.get("max_total_num_tokens"),
                       "memory_usage": (info.get("internal_states") or [{}])[0].get("memory_usage"),
                       "model_dtype": None,  # a server does not say which dtype "auto" became
                       "server_args": {k: info.get(k) for k in ("dtype", "kv_cache_dtype", "quantization",
                                                                 "attention_backend", "page_size", "device")}}}


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

# SGLang 0.5.23's per-step scheduler line (non-hybrid pools); "#token" counts the KV slots held
# by the running requests (its metrics call it kv_used_tokens).
DECODE_LINE = re.compile(r"Decode batch.*?#running-req: (\d+), #token: (\d+), .*?#queue-req: (\d+)")
WAVE_MARK = re.compile(r"\[multiturn\] wave (\d+) (start|end)")


def engine_load_by_wave(log_text: str) -> dict:
    """{turn: {"engine_peak_kv_tokens", "engine_peak_running_reqs", "engine_peak_queued_reqs"}}
    from the engine's decode lines between our wave markers (empty if there are none)."""
    by_wave, turn = {}, None
    for line in log_text.splitlines():
        if mark := WAVE_MARK.search(line):
            turn = int(mark.group(1)) if mark.group(2) == "start" else None
        elif turn is not None and (decode := DECODE_LINE.search(line)):
            running, tokens, queued = map(int, decode.groups())
            peak = by_wave.setdefault(turn, {"engine_peak_kv_tokens": 0, "engine_peak_running_reqs": 0,
                                             "engine_peak_queued_reqs": 0})
            peak["engine_peak_kv_tokens"] = max(peak["engine_peak_kv_tokens"], tokens)
            peak["engine_peak_running_reqs"] = max(peak["engine_peak_running_reqs"], running)
            peak["engine_peak_queued_reqs"] = max(peak["engine_peak_queued_reqs"], queued)
    return by_wave



def _quantiles_ms(values: list) -> dict:
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "p99": None}
    return {"median": float(np.median(values)) * 1e3, "p99": float(np.percentile(values, 99)) * 1e3}


def summarize(records: list[dict], duration_s: float, peaks: dict) -> dict:
    ok = [r for r in records if r["error"] is None]
    prompt, cached = sum(r["prompt_tokens"] for r in ok), sum(r["cached_tokens"] for r in ok)
    output = sum(r["output_tokens"] for r in ok)
    return {"requests": len(ok), "errors": len(records) - len(ok), "duration_s": duration_s,
            "req_per_s": len(ok) / duration_s if duration_s > 0 else None,
            "output_tok_per_s": output / duration_s if duration_s > 0 else None,
            "prompt_tokens": prompt, "cached_tokens": cached, "output_tokens": output,
            "cache_hit_rate": cached / prompt if prompt else None,
            "ttft_ms": _quantiles_ms([r["ttft_s"] for r in ok]),
            "tpot_ms": _quantiles_ms([r["tpot_s"] for r in ok]),
            "latency_ms": _quantiles_ms([r["latency_s"] for r in ok]),
            **peaks,
            "retractions": sum(r["num_retractions"] for r in ok)}


PEAKS = ("peak_inflight_tokens", "engine_peak_kv_tokens", "engine_peak_running_reqs", "engine_peak_queued_reqs")


def summarize_run(run: dict) -> dict:
    """Per wave (= turn) and overall. Peaks missing from a wave (no engine log) are None."""
    per_turn = []
    for wave in run["waves"]:
        records = [r for r in run["records"] if r["turn"] == wave["turn"]]
        peaks = {key: wave.get(key) for key in PEAKS}
        per_turn.append({"turn": wave["turn"], **summarize(records, wave["end_s"] - wave["start_s"], peaks)})
    overall_peaks = {key: max((t[key] for t in per_turn if t[key] is not None), default=None) for key in PEAKS}
    overall = summarize(run["records"], sum(w["end_s"] - w["start_s"] for w in run["waves"]), overall_peaks)
    return {"overall": overall, "per_turn": per_turn}


def kv_bytes_per_token(engine: dict) -> float | None:
    """Engine-reported pool bytes (GiB, 3 decimals) over its slots: all layers and heads."""
    kv_gib = (engine.get("memory_usage") or {}).get("kvcache")
    if not kv_gib or not engine.get("max_total_num_tokens"):
        return None
    return float(kv_gib) * 2**30 / engine["max_total_num_tokens"]


def compare_to_baseline(results: list[dict]) -> dict:
    """Each config against the first one that ran: speed ratios, and how many turn-1 answers
    (same prompts everywhere, greedy) are token-for-token identical."""
    ok = [r for r in results if r["ok"]]
    if len(ok) < 2:
        return {}
    base = ok[0]
    base_answers = {r["conversation"]: r["output_ids"] for r in base["records"] if r["turn"] == 1}
    out = {"baseline": base["config"], "configs": {}}
    for result in ok[1:]:
        answers = {r["conversation"]: r["output_ids"] for r in result["records"] if r["turn"] == 1}
        same = sum(answers.get(c) == ids for c, ids in base_answers.items())
        b, o = base["summary"]["overall"], result["summary"]["overall"]
        out["configs"][result["config"]] = {
            "output_tok_per_s_ratio": _ratio(o["output_tok_per_s"], b["output_tok_per_s"]),
            "ttft_median_ratio": _ratio(o["ttft_ms"]["median"], b["ttft_ms"]["median"]),
            "tpot_median_ratio": _ratio(o["tpot_ms"]["median"], b["tpot_ms"]["median"]),
            "cache_hit_rate_delta": _delta(o["cache_hit_rate"], b["cache_hit_rate"]),
            "turn1_answers_identical": f"{same}/{len(base_answers)}"}
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def _delta(a, b):
    return a - b if a is not None and b is not None else None


# ---------------------------------------------------------------------------------------------
# Output: table, JSON, plots
# ---------------------------------------------------------------------------------------------


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict]) -> None:
    head = (f"{'config':36s} {'turn':>4s} {'reqs':>4s} {'req/s':>6s} {'out tok/s':>9s} {'TTFT med':>8s} "
            f"{'TTFT p99':>8s} {'TPOT med':>8s} {'TPOT p99':>8s} {'hit rate':>8s} {'KV peak':>7s} {'in-flt':>6s} "
            f"{'run':>3s} {'que':>3s} {'retr':>4s} "
            f"{'err':>3s}")
    print("\n" + head + "\n" + "-" * len(head))
    for result in results:
        if not result["ok"]:
            print(f"{result['config']:36s} FAILED: {result['error'].splitlines()[0][:90]}")
            continue
        rows = [(str(t["turn"]), t) for t in result["summary"]["per_turn"]] + [("all", result["summary"]["overall"])]
        for turn, s in rows:
            print(f"{result['config'] if turn == 'all' else '':36s} {turn:>4s} {s['requests']:4d} "
                  f"{_fmt(s['req_per_s'], '6.2f')} {_fmt(s['output_tok_per_s'], '9.1f')} "
                  f"{_fmt(s['ttft_ms']['median'], '8.0f')} {_fmt(s['ttft_ms']['p99'], '8.0f')} "
                  f"{_fmt(s['tpot_ms']['median'], '8.1f')} {_fmt(s['tpot_ms']['p99'], '8.1f')} "
                  f"{_fmt(s['cache_hit_rate'], '8.3f')} {_fmt(s['engine_peak_kv_tokens'], '7d')} "
                  f"{_fmt(s['peak_inflight_tokens'], '6d')} {_fmt(s['engine_peak_running_reqs'], '3d')} "
                  f"{_fmt(s['engine_peak_queued_reqs'], '3d')} {s['retractions']:4d} "
                  f"{s['errors']:3d}")
    print("TTFT/TPOT in ms; hit rate = cached / prompt tokens; KV peak = most KV tokens held by running requests\n"
          "(engine, per decode step); in-flt = client-side peak of prompt+output tokens sent and not finished;\n"
          "run/que = most requests running/queued in the engine; retr = SGLang retractions")
    print("\npools and dtypes (engine-reported):")
    for result in results:
        if result["ok"]:
            e = result["engine"]
            print(f"  {result['config']:36s} model dtype {e.get('model_dtype') or '?':9s} "
                  f"kv_cache_dtype={e['server_args'].get('kv_cache_dtype')!s:9s} "
                  f"pool {e['max_total_num_tokens']} tokens, "
                  f"{(e.get('memory_usage') or {}).get('kvcache', '?')} GiB, "
                  f"{_fmt(kv_bytes_per_token(e), '.0f')} B/token; engine start "
                  f"{_fmt(result.get('engine_start_s'), '.0f')} s")


def plot(results: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ok = [r for r in results if r["ok"]]
    names = [r["config"] for r in ok]
    colors = [f"C{i}" for i in range(len(ok))]
    overall = [r["summary"]["overall"] for r in ok]

    perf_path = out.with_name(out.stem + "_perf.png")
    fig, axes = plt.subplots(1, 3, figsize=(14, 1.6 + 0.5 * len(ok)), sharey=True)
    axes[0].barh(names, [s["output_tok_per_s"] or 0 for s in overall], color=colors)
    axes[0].set_xlabel("output tokens/s (all turns)")
    for ax, key, label in ((axes[1], "ttft_ms", "TTFT (ms)"), (axes[2], "tpot_ms", "TPOT (ms)")):
        ax.barh(names, [s[key]["median"] or 0 for s in overall], color=colors)
        # p99 as a tick on the bar: with few requests it is close to the maximum.
        ax.plot([s[key]["p99"] or 0 for s in overall], names, "k|", markersize=14)
        ax.set_xlabel(f"{label}: bar = median, | = p99")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(5))
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(perf_path, dpi=110)
    plt.close(fig)

    cache_path = out.with_name(out.stem + "_cache_hit.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (result, color) in enumerate(zip(ok, colors)):
        turns = result["summary"]["per_turn"]
        # Configs with equal pools often have equal hit rates: a small x offset and their own
        # marker and dash keep every line visible.
        offset = 0.04 * (i - (len(ok) - 1) / 2)
        ax.plot([t["turn"] + offset for t in turns], [t["cache_hit_rate"] or 0 for t in turns], color=color,
                marker="osD^v<>"[i % 7], linestyle=("-", "--", "-.", ":")[i % 4],
                label=f"{result['config']} (pool {result['engine']['max_total_num_tokens']} tok)")
    ax.set_xlabel("turn")
    ax.set_ylabel("cache hit rate (cached / prompt tokens)")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(cache_path, dpi=110)
    plt.close(fig)
    return [perf_path, cache_path]


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def resolve_checkpoints(args) -> dict:
    needed = {CONFIGS[c].checkpoint for c in args.configs}
    checkpoints = {}
    if "model" in needed:
        if args.model is None:
            from breccia_sglang.harness.demo_model import fetch_demo_model

            args.model = fetch_demo_model()
        checkpoints["model"] = args.model
    if "breccia" in needed:
        if args.breccia_model is None:
            from breccia_sglang.harness.demo import quantized_demo_model

            args.breccia_model = quantized_demo_model("fp8")
        checkpoints["breccia"] = args.breccia_model
    return checkpoints


def build_workload(args, tokenizer) -> dict:
    conversations = worker.build_conversations(
        tokenizer, groups=args.groups, prompts_per_group=args.prompts_per_group,
        system_prompt_len=args.system_prompt_len, question_len=args.question_len, turns=args.turns, seed=args.seed)
    return {"conversations": conversations, "output_len": args.output_len, "concurrency": args.concurrency}


def run_all(args, workload: dict, tokenizer, checkpoints: dict) -> list[dict]:
    if args.url:
        return [{"config": args.label, **asyncio.run(_run_http(args, tokenizer, workload))}]
    results = []
    for config in args.configs:
        spec = engine_spec(config, checkpoints, args, workload)
        log_path = args.out.with_name(f"{args.out.stem}_logs") / f"{config}.log"
        started = time.monotonic()
        result = run_engine_config(spec, log_path, args.timeout)
        results.append({"config": config, "checkpoint": spec["engine"]["model_path"], "env": spec["env"],
                        "engine_kwargs": spec["engine"], "wall_s": time.monotonic() - started,
                        "log": str(log_path), **result})
        if not result["ok"]:
            print(f"{config}: FAILED, see {log_path}\n{result['error']}", flush=True)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM as an exception, so the engine process (in its own session) is ended on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    from transformers import AutoTokenizer

    checkpoints = {} if args.url else resolve_checkpoints(args)
    # Every config's checkpoint carries the same tokenizer (quantize copies it).
    tokenizer_path = args.model or (worker.server_model_path(args.url) if args.url else checkpoints["breccia"])
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    workload = build_workload(args, tokenizer)

    results = run_all(args, workload, tokenizer, checkpoints)
    for result in results:
        if result["ok"]:
            result["summary"] = summarize_run(result)
    print_table(results)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        **report_header("multiturn", args, argv),
        "workload": {"conversations": len(workload["conversations"]),
                     "requests": len(workload["conversations"]) * args.turns,
                     "first_turn_prompt_tokens": [len(worker.first_turn_ids(tokenizer, c))
                                                  for c in workload["conversations"]]},
        "configs": results,
        "comparison": compare_to_baseline(results),
        "wall_s": time.monotonic() - started,
    }
    args.out.write_text(json.dumps(report, indent=1, default=float))
    pngs = plot(results, args.out) if any(r["ok"] for r in results) else []
    plots = f" and {', '.join(p.name for p in pngs)}" if pngs else " (no plots: no config ran)"
    print(f"\nwrote {args.out}{plots} in {report['wall_s']:.0f} s")
    return 0 if all(r["ok"] and r["summary"]["overall"]["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
