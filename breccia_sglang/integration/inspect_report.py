"""``breccia-sglang inspect``: what a checkpoint holds and which SGLang kernel would run each
layer on this machine, or on a GPU of a given compute capability (``--capability 90``) that is
not here (the kernel choice is SGLang-facing, so the report lives here).

With ``--tp`` / ``--ep-size`` each layer is shown as one rank would hold it, sharded as SGLang
shards it on a GPU: a MoE layer's experts split over the expert-parallel ranks and their
intermediate over the rest (tp / ep), and the row-parallel linears of the model families served
(``o_proj``, ``down_proj``) split along K. A shard that would split a scale block has no kernel,
as at server start, where it would stop the server after loading; here every such layer is
listed at once. Column-parallel linears are shown whole: their split (along N) never cuts a
1 x B block. (On CPU, SGLang pads a dense MLP's intermediate size per rank, 96 -> 2 x 64 at
tp=2, so a CPU server takes some down_proj splits that a GPU, and this report, refuse.) The
attention heads of ``config.json`` are checked as SGLang's attention layers assert them when the
model is built: query heads split evenly, and key / value heads split evenly or are replicated
over a whole number of ranks each; SGLang's own assert carries no message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import names
from ..errors import BrecciaConfigError
from ..format import BrecciaCheckpoint
from ..format.experts import expert_weights, moe_prefixes
from ..format.sources import json_object
from .gemm import LinearSpec, Target, choose_kernel
from .gemm.batch_routes import describe_routes
from .gemm.registry import kernel_report
from .moe import MoESpec, choose_moe_kernel, moe_kernel_report

ROW_PARALLEL = ("o_proj", "down_proj")  # SGLang's RowParallelLinear in Llama / Qwen / Mistral / DeepSeek
OK = "OK"


@dataclass(frozen=True)
class Parallel:
    """SGLang's --tp and --ep-size: experts split over ``ep`` ranks, the rest of a MoE layer over
    tp / ep (SGLang's moe_tp_size), dense row-parallel K over ``tp``."""

    tp: int = 1
    ep: int = 1

    def __post_init__(self):
        if self.tp < 1 or self.ep < 1 or self.tp % self.ep:
            raise BrecciaConfigError(f"--tp {self.tp} --ep-size {self.ep}: both at least 1, and --ep-size must "
                                     "divide --tp (SGLang splits the rest of each MoE layer over tp / ep)")

    @property
    def moe_tp(self) -> int:
        return self.tp // self.ep

    def __str__(self) -> str:
        return f"--tp {self.tp}" + (f" --ep-size {self.ep}" if self.ep > 1 else "")


def inspect_checkpoint(path, capability: int | None = None, dtype: str = "bfloat16", gpu: str | None = None,
                       tp: int = 1, ep: int = 1) -> str:
    """Validate ``path`` exactly as loading does and describe it, one line per tensor (one per
    MoE layer for its experts), with the kernel it would get here, or on an NVIDIA GPU of ``capability`` (e.g. 90 for sm_90), for
    activations in ``dtype`` (SGLang's --dtype: FP4 Marlin, for one, takes only float16). With
    ``gpu``, a GPU model's name as CUDA gives it ("NVIDIA H200"), each FP8 kernel's batch routes
    on that model too (decode- and prefill-sized batches its tuned file hands to other kernels).
    With ``tp`` / ``ep`` (>1), each layer as one rank holds it (the module docstring). The last
    line ends in ``OK``, or counts the layers no kernel can serve, each shown ``refused: why``."""
    parallel = Parallel(tp, ep)
    ckpt = BrecciaCheckpoint.open(path)
    ckpt.check_scale_values()
    target = Target.here() if capability is None else Target.gpu(capability)
    where = f"this machine ({target})" if capability is None else f"sm_{capability}"
    where += f" ({gpu}'s batch routes)" if gpu else ""
    where += f", a rank of {parallel}" if parallel.tp > 1 else ""
    rows = [("tensor", "recipe/layout", "shape", "bytes", f"kernel on {where}, {dtype}")]
    experts = [expert_weights(ckpt.entries, prefix) for prefix in moe_prefixes(ckpt.entries)]
    in_experts = {e.name for layer in experts for e in layer.all()}
    for name, entry in sorted(ckpt.entries.items()):
        if name in in_experts:
            continue
        rows.append(_linear_row(name, entry, getattr(torch, dtype), target, gpu, parallel))
    rows += [_moe_row(layer, getattr(torch, dtype), target, parallel) for layer in experts]
    plain_bytes = sum(t.nbytes for t in ckpt.plain.values())
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    heads = attention_split_refusals(ckpt.directory, parallel)
    lines += [f"config.json: refused: {why}" for why in heads]
    quant_bytes = sum(e.nbytes for e in ckpt.entries.values())
    refused = sum(r[-1].startswith("refused") for r in rows)
    verdict = [f"{refused} layer(s) refused (no kernel for this shard, shown above)"] if refused else []
    verdict += [f"the attention heads do not split over {parallel} (shown above)"] if heads else []
    verdict = "; ".join(verdict) or OK
    lines.append(
        f"{len(ckpt.entries)} breccia tensors ({_size(quant_bytes)}), {len(ckpt.plain)} high-precision "
        f"tensors ({_size(plain_bytes)}) in {len(ckpt.files)} file(s): {verdict}"
    )
    return "\n".join(lines)


def attention_split_refusals(directory: Path, parallel: Parallel) -> list[str]:
    """Why SGLang's attention layers could not be built at ``parallel.tp`` from ``directory``'s
    config.json (its ``text_config`` for a multimodal model), as they assert when the model is
    built (e.g. ``LlamaAttention``): the query heads divide by tp, and the key / value heads do,
    or tp divides by them (each kv head then replicated on tp / heads ranks)."""
    config = json_object(Path(directory) / "config.json")  # {} if unreadable: loading says what is wrong with it
    text_config = config.get("text_config")
    config = text_config if isinstance(text_config, dict) else config
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    tp, reasons = parallel.tp, []
    if isinstance(heads, int) and heads % tp:
        reasons.append(f"{heads} attention heads (num_attention_heads) do not divide by --tp {tp}")
    if isinstance(kv_heads, int) and kv_heads > 0 and (kv_heads % tp if kv_heads >= tp else tp % kv_heads):
        reasons.append(f"{kv_heads} key / value heads (num_key_value_heads) neither divide by --tp {tp} nor "
                       "divide it")
    return reasons


def _linear_row(name, entry, dtype, target, gpu, parallel: Parallel) -> tuple:
    out_features, in_features = entry.data.shape[-2], entry.data.shape[-1]
    shape = "x".join(map(str, entry.data.shape))
    k = in_features
    if parallel.tp > 1 and name.removesuffix(".weight").endswith(ROW_PARALLEL):
        shape += f" (K/{parallel.tp} a rank)"
        if in_features % parallel.tp:
            return name, entry.label, shape, _size(entry.nbytes), f"refused: K={in_features} does not divide by {parallel}"
        k = in_features // parallel.tp
    spec = LinearSpec.for_entry(name, entry, k, (out_features,), dtype, target, row_parallel=k < in_features)
    kernel, cell = _choice(spec, choose_kernel, kernel_report)
    if gpu and kernel:
        cell += describe_routes(kernel, spec, gpu)
    return name, entry.label, shape, _size(entry.nbytes), cell


def _moe_row(layer, dtype, target, parallel: Parallel) -> tuple:
    """One row per MoE layer: its experts run as one fused kernel. Shape: experts x (gate/up
    rows, hidden) + (hidden, expert intermediate), as a rank holds them."""
    inter, hidden = layer.first.data.shape
    size = _size(sum(e.nbytes for e in layer.all()))
    label = (f"{layer.prefix} (MoE)", layer.label)
    if layer.num_experts % parallel.ep or inter % parallel.moe_tp:
        why = (f"{layer.num_experts} experts do not divide by --ep-size {parallel.ep}" if layer.num_experts % parallel.ep
               else f"the experts' intermediate size {inter} does not divide by tp / ep = {parallel.moe_tp}")
        return *label, f"{layer.num_experts}x({2 * inter}x{hidden}+{hidden}x{inter})", size, f"refused: {why}"
    experts, inter = layer.num_experts // parallel.ep, inter // parallel.moe_tp
    spec = MoESpec.for_experts(layer.prefix, layer.served_first(inter), experts, hidden, inter, dtype, target,
                               expert_parallel=parallel.ep)
    shape = f"{experts}x({2 * inter}x{hidden}+{hidden}x{inter})"
    kernel, cell = _choice(spec, choose_moe_kernel, moe_kernel_report)
    if kernel and layer.reblocked(spec.block):  # one scale per row, repeated along K (format.experts.row_block)
        cell += f" (as 1x{spec.block} blocks)"
    return *label, shape, size, cell


def _choice(spec, choose, report) -> tuple:
    """(the kernel ``choose`` gives ``spec``, its name), or (None, ``refused: `` and why the
    last-resort kernel, emulated, which serves every layer it can hold, cannot)."""
    reasons = dict(report(spec))
    if all(reasons.values()):
        return None, f"refused: {reasons[names.GEMM_EMULATED]}"
    kernel = choose(spec)
    return kernel, kernel.name


def _size(n: int) -> str:
    return f"{n / 2**20:.2f}MiB" if n >= 2**20 else f"{n / 2**10:.1f}KiB"
