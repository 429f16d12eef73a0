"""Load time: a breccia checkpoint through ``--breccia-format`` vs the same weights in SGLang's native FP8 layout.

    python benchmarks/bench_load.py                        # CPU: demo model, 64x64-block FP8, ~10 min
    python benchmarks/bench_load.py --size 1b              # CPU: a random-weight 1B-shaped Llama
    python benchmarks/bench_load.py --device cuda          # GPU: demo model, per-tensor FP8
    python benchmarks/bench_load.py --breccia DIR --native DIR --device cuda   # your own pair

The demo pair is the same weights twice, the same FP8 codes and scale values, built with this
project's converters (``demo_pair``), so the only difference is the loader. Each load is a fresh
``sgl.Engine`` process (``quantization="breccia"`` or ``"fp8"``); the runs alternate between the
loaders so drift on the machine hits all alike, and the first ``--warmups`` rounds (they fill the
OS page cache) are reported but not counted.

Loaders: native and breccia both through SGLang's weight loader v2 (``SGLANG_ENABLE_WEIGHT_LOADER_V2=1``),
and breccia through SGLang's default loader as well ("breccia-v1", what users get). Native block
FP8 cannot be timed through the default loader: SGLang 0.5.23's Llama loader renames
``weight_scale_inv`` to ``weight_scale``, which block FP8 layers do not have, so it loads
without its scales (a warning each). A run in which SGLang skipped any tensor is refused.

What is timed, per run:
  - weight load: SGLang's own ``Load weight end. elapsed=...`` (``ModelRunner.load_model``:
    reading the checkpoint's quantization config, building the model, streaming every tensor
    into its parameters, ``process_weights_after_loading``). For breccia this includes reading
    every safetensors header, parsing each tensor's recipe JSON, checking layouts and every
    scale's values, and the no-silent-loss bookkeeping.
  - engine start: the wall time of ``sgl.Engine(...)``, processes, KV pool and all.
Reported: medians, the breccia / native ratio of each (target: weight load <= 1.10), JSON and a PNG.
The demo model's weight load is a fraction of a second on CPU, so the engine-start column
(seconds of process start-up, identical code for all) shows how little the ratio weighs there.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from _common import OUT_DIR, report_header, run_engine
from breccia_sglang import names

TARGET_RATIO = 1.10  # the bar: within 10% of the native FP8 load
LOAD_LINE = re.compile(r"Load weight end\. elapsed=([\d.]+) s")
# SGLang's model loaders log a checkpoint tensor they have no parameter for, and go on.
SKIPPED_LINE = re.compile(r"Parameter (\S+) not found in params_dict")
# SGLang 0.5.23's default (legacy) Llama loader renames block FP8's ``weight_scale_inv`` to
# ``weight_scale``, which block FP8 layers do not have: the native checkpoint would load without
# its scales (a warning per tensor), and less work is no fair baseline. Its weight loader v2
# keeps the name; breccia's loader serves the same under either.
LOADER_V2 = {"SGLANG_ENABLE_WEIGHT_LOADER_V2": "1"}
# name -> (checkpoint of the pair, SGLang's quantization=, environment). "breccia-v1" is breccia
# through SGLang's default loader, what users get without setting anything.
LOADERS = {
    "native": ("native", "fp8", LOADER_V2),
    "breccia": ("breccia", names.QUANT_METHOD, LOADER_V2),
    "breccia-v1": ("breccia", names.QUANT_METHOD, {}),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--breccia", type=Path, help="breccia FP8 checkpoint (default: the demo model's)")
    p.add_argument("--native", type=Path, help="the same weights in SGLang's FP8 layout (default: exported here)")
    p.add_argument("--repeats", type=int, default=5, help="timed loads of each loader")
    p.add_argument("--warmups", type=int, default=1, help="untimed loads of each first (they fill the page cache)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=("demo", "1b"), default="demo",
                   help="the pair's model: the demo model (135M), or a random-weight Llama shaped like a 1B model "
                        "(~1 GiB of FP8; built once, ~5 GiB of disk with its pair)")
    p.add_argument("--recipe", choices=("fp8", "fp8-block"),
                   help="the demo pair's FP8 layout (default: fp8, per tensor, on a GPU; fp8-block on CPU, where "
                        "SGLang's per-tensor FP8 cannot load: it requantizes merged q/k/v scales with a CUDA kernel)")
    p.add_argument("--out", type=Path, default=OUT_DIR / "load.json")
    args = p.parse_args(argv)
    if (args.breccia is None) != (args.native is None):
        p.error("give both --breccia and --native, or neither (the demo pair is built)")
    if args.repeats < 1 or args.warmups < 0:
        p.error("--repeats must be at least 1 and --warmups at least 0")
    args.recipe = args.recipe or ("fp8-block" if args.device == "cpu" else "fp8")
    return args


BLOCK = 64  # the CPU pair's square FP8 blocks: SGLang's CPU config code takes square blocks only


def native_block_fp8(src: Path, dst: Path, block: int = BLOCK) -> None:
    """``src`` (a high-precision checkpoint) in SGLang's native block FP8 layout: every linear
    weight (embeddings and lm_head kept, as ``quantize`` keeps them) as E4M3 codes with one fp32
    ``weight_scale_inv`` per (block x block) tile, amax / 448, as DeepSeek-V3 checkpoints are."""
    from fnmatch import fnmatch

    from safetensors import safe_open
    from safetensors.torch import save_file

    from breccia_sglang.format.quantize import DEFAULT_KEEP
    from breccia_sglang.format.writer import atomic_output_dir, write_metadata_files

    tensors = {}
    for file in sorted(src.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if not (name.endswith(".weight") and t.ndim == 2 and not any(fnmatch(name, k) for k in DEFAULT_KEEP)):
                    tensors[name] = t
                    continue
                rows, k = t.shape
                if rows % block or k % block:
                    raise ValueError(f"{file}: {name} {tuple(t.shape)} is not a whole number of {block}x{block} blocks")
                tiles = t.float().reshape(rows // block, block, k // block, block)
                scale = tiles.abs().amax((1, 3)).clamp(min=1e-12) / 448
                tensors[name] = (tiles / scale[:, None, :, None]).reshape(rows, k).to(torch.float8_e4m3fn)
                tensors[name.removesuffix(".weight") + ".weight_scale_inv"] = scale
    with atomic_output_dir(dst) as tmp:  # an interrupted build leaves nothing that looks finished
        save_file(tensors, str(tmp / "model.safetensors"))
        write_metadata_files(src, tmp, {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                        "weight_block_size": [block, block]})


# A Llama shaped like a 1B model (hidden 2048, 16 layers, GQA 32/8, head_dim 64) with random
# weights and the demo model's tokenizer: at 135M parameters the demo's load is a few tenths of
# a second of fixed costs; this one streams ~1 GiB of FP8, which is what a user's load is made of.
SYNTHETIC_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "dtype": "bfloat16"}


def synthetic_model(dst: Path, shape: dict = SYNTHETIC_1B) -> Path:
    """The demo model's config and tokenizer with ``shape``'s sizes and random bf16 weights."""
    from safetensors.torch import save_file

    from breccia_sglang.format.writer import atomic_output_dir, write_metadata_files
    from breccia_sglang.harness.demo_model import fetch_demo_model

    src = fetch_demo_model()
    config = {**json.loads((src / "config.json").read_text()), **shape}
    hidden, inter, heads, kv_heads, head_dim = (config[k] for k in ("hidden_size", "intermediate_size",
                                                                      "num_attention_heads", "num_key_value_heads",
                                                                      "head_dim"))
    gen = torch.Generator().manual_seed(0)

    def randn(*size):
        return (torch.randn(*size, generator=gen) * 0.02).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": randn(config["vocab_size"], hidden),
               "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        tensors |= {f"{layer}.self_attn.q_proj.weight": randn(heads * head_dim, hidden),
                    f"{layer}.self_attn.k_proj.weight": randn(kv_heads * head_dim, hidden),
                    f"{layer}.self_attn.v_proj.weight": randn(kv_heads * head_dim, hidden),
                    f"{layer}.self_attn.o_proj.weight": randn(hidden, heads * head_dim),
                    f"{layer}.mlp.gate_proj.weight": randn(inter, hidden),
                    f"{layer}.mlp.up_proj.weight": randn(inter, hidden),
                    f"{layer}.mlp.down_proj.weight": randn(hidden, inter),
                    f"{layer}.input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                    f"{layer}.post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    with atomic_output_dir(dst) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"))
        write_metadata_files(src, tmp, None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def demo_pair(recipe: str, size: str = "demo") -> tuple[Path, Path]:
    """The demo model twice, the same FP8 codes and scale values, cached beside the demo model.

    ``fp8``: ``breccia-sglang quantize --recipe fp8``, then ``export-sglang-fp8`` of it.
    ``fp8-block``: SGLang's native 64x64 block FP8 (``native_block_fp8``), then
    ``breccia-sglang convert --from deepseek-fp8`` of it (one scale per row and 64-wide K block:
    breccia's layout repeats each tile's scale on its 64 rows, so its scales take 64x the bytes).
    """
    from breccia_sglang.format import make_recipe
    from breccia_sglang.format.convert import convert_to_breccia, export_sglang_fp8
    from breccia_sglang.format.quantize import quantize_checkpoint
    from breccia_sglang.harness.cache import cache_dir, cached_checkpoint
    from breccia_sglang.harness.demo_model import DEMO_NAME, fetch_demo_model

    name = DEMO_NAME if size == "demo" else f"synthetic-llama-{size}"
    source = fetch_demo_model() if size == "demo" else cached_checkpoint(cache_dir() / name, synthetic_model)
    breccia_dir, native_dir = (cache_dir() / f"{name}-{kind}-{recipe}-pair" for kind in ("breccia", "sglang"))
    if recipe == "fp8":
        cached_checkpoint(breccia_dir, lambda dst: quantize_checkpoint(source, dst, make_recipe("fp8"), overwrite=True))
        cached_checkpoint(native_dir, lambda dst: export_sglang_fp8(breccia_dir, dst, overwrite=True))
    else:
        cached_checkpoint(native_dir, lambda dst: native_block_fp8(source, dst))
        cached_checkpoint(breccia_dir, lambda dst: convert_to_breccia(native_dir, dst, "deepseek-fp8", overwrite=True))
    return breccia_dir, native_dir


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def load_once(loader: str, model: Path, device: str) -> dict:
    """One fresh engine process; its weight-load and engine-start seconds."""
    _, quantization, env = LOADERS[loader]
    # The KV cache is the model dtype's for both: the pool is not what is compared here, and
    # a small one keeps engine start about loading.
    spec = {"env": {names.ENV_FP8_KV: "0", **env}, "requests": [],
            "engine": {"model_path": str(model), "device": device, "quantization": quantization,
                       "max_total_tokens": 2048, "skip_tokenizer_init": True, "log_level": "info"}}
    with tempfile.TemporaryDirectory() as tmp:
        result = run_engine(spec, tmp)
    if not result["ok"]:
        raise RuntimeError(f"{loader} load of {model} failed: {result['error_type']}: {result['error']}")
    loads = LOAD_LINE.findall(result["stderr"])
    skipped = SKIPPED_LINE.findall(result["stderr"])
    if skipped:
        raise RuntimeError(f"{loader}: SGLang skipped {len(skipped)} tensors of {model} (e.g. {skipped[0]}); "
                           "a load that drops tensors is not comparable")
    if len(loads) != 1:
        raise RuntimeError(f"{loader}: expected one 'Load weight end' line in the engine log, found {len(loads)}")
    return {"loader": loader, "weight_load_s": float(loads[0]), "engine_start_s": result["engine_start_s"],
            "weight_gib": float(result["memory_usage"]["weight"])}


def measure(pair: dict, repeats: int, warmups: int, device: str) -> list[dict]:
    from tqdm import tqdm

    runs = []
    order = [(i, loader) for i in range(warmups + repeats) for loader in LOADERS]
    for i, loader in tqdm(order, desc="loads", unit="engine", file=sys.stdout):
        runs.append({"run": i, "warmup": i < warmups, **load_once(loader, pair[LOADERS[loader][0]], device)})
    return runs


def summarize(runs: list[dict]) -> dict:
    """Medians per loader, their breccia / native ratios, and the median of the ratios within
    each round (loads of one round run back to back, so machine drift cancels in them)."""
    timed = {loader: [r for r in runs if r["loader"] == loader and not r["warmup"]] for loader in LOADERS}
    summary = {}
    for loader, rs in timed.items():
        summary[loader] = {key: statistics.median(r[key] for r in rs) for key in ("weight_load_s", "engine_start_s")}
        summary[loader]["weight_gib"] = rs[0]["weight_gib"]
    rounds = {}
    for r in runs:
        if not r["warmup"]:
            rounds.setdefault(r["run"], {})[r["loader"]] = r["weight_load_s"]
    for key in ("weight_load_s", "engine_start_s"):
        summary[f"ratio_{key}"] = summary["breccia"][key] / summary["native"][key]
        summary[f"ratio_v1_{key}"] = summary["breccia-v1"][key] / summary["native"][key]
    for name, loader in (("paired_ratio", "breccia"), ("paired_ratio_v1", "breccia-v1")):
        ratios = [r[loader] / r["native"] for r in rounds.values()]
        summary[f"{name}_weight_load_s"] = statistics.median(ratios)
        summary[f"{name}_ci95_weight_load_s"] = bootstrap_ci95(ratios)
    summary["within_target"] = summary["ratio_weight_load_s"] <= TARGET_RATIO
    return summary


def bootstrap_ci95(values: list[float], resamples: int = 4000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the median of ``values`` (rounds resampled with
    replacement; seeded, so a report is reproducible). With few rounds it is wide, which is
    the point: a ratio is only shown within target when the whole interval is."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


LABELS = {"native": "SGLang native FP8", "breccia": "breccia\n(SGLang loader v2)",
          "breccia-v1": "breccia\n(SGLang's default loader)"}


def plot(runs: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, key, title in zip(axes, ("weight_load_s", "engine_start_s"),
                              ("weight load (SGLang's log)", "whole sgl.Engine start")):
        for x, (loader, color) in enumerate(zip(LOADERS, ("#888", "#2ca02c", "#98df8a"))):
            ax.bar(x, summary[loader][key], color=color, width=0.6)
            timed = [r[key] for r in runs if r["loader"] == loader and not r["warmup"]]
            ax.plot([x] * len(timed), timed, "k.", ms=4)
            ax.text(x, summary[loader][key], f"{summary[loader][key]:.2f} s", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(LOADERS)), [LABELS[loader] for loader in LOADERS], fontsize=8)
        ax.set_ylabel("seconds (median; dots: runs)")
        ax.set_title(f"{title}: breccia / native {summary['ratio_' + key]:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    breccia_dir, native_dir = (args.breccia, args.native) if args.breccia else demo_pair(args.recipe, args.size)
    runs = measure({"breccia": breccia_dir, "native": native_dir}, args.repeats, args.warmups, args.device)
    summary = summarize(runs)
    report = {**report_header("load", args, argv),
              "checkpoints": {"breccia": str(breccia_dir), "native": str(native_dir)},
              "checkpoint_bytes": {"breccia": checkpoint_bytes(breccia_dir), "native": checkpoint_bytes(native_dir)},
              "summary": summary, "runs": runs}
    args.out.write_text(json.dumps(report, indent=1))
    plot(runs, summary, args.out.with_suffix(".png"))
    for loader in LOADERS:
        s = summary[loader]
        print(f"{loader:11s} weight load {s['weight_load_s']:.3f} s  engine start {s['engine_start_s']:.1f} s  "
              f"weights {s['weight_gib']:.3f} GiB")
    print(f"breccia / native weight load: {summary['ratio_weight_load_s']:.3f} with the same SGLang loader "
          f"(median of per-round ratios {summary['paired_ratio_weight_load_s']:.3f}), "
          f"{summary['ratio_v1_weight_load_s']:.3f} through SGLang's default one "
          f"({summary['paired_ratio_v1_weight_load_s']:.3f}); 95% interval of the per-round median "
          f"{summary['paired_ratio_ci95_weight_load_s'][0]:.3f}-{summary['paired_ratio_ci95_weight_load_s'][1]:.3f}; "
          f"target <= {TARGET_RATIO}; "
          f"engine start {summary['ratio_engine_start_s']:.3f}; wrote {args.out} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
