"""``breccia-sglang inspect``: what a checkpoint holds and which SGLang kernel would run each
layer on this machine, or on a GPU of a given compute capability (``--capability 90``) that is
not here (the kernel choice is SGLang-facing, so the report lives here)."""

from __future__ import annotations

import torch

from ..format import BrecciaCheckpoint
from ..format.experts import expert_weights, moe_prefixes
from .gemm import LinearSpec, Target, choose_kernel
from .gemm.batch_routes import describe_routes
from .moe import MoESpec, choose_moe_kernel


def inspect_checkpoint(path, capability: int | None = None, dtype: str = "bfloat16", gpu: str | None = None) -> str:
    """Validate ``path`` exactly as loading does and describe it, one line per tensor (one per
    MoE layer for its experts), with the kernel it would get here, or on an NVIDIA GPU of ``capability`` (e.g. 90 for sm_90), for
    activations in ``dtype`` (SGLang's --dtype: FP4 Marlin, for one, takes only float16). With
    ``gpu``, a GPU model's name as CUDA gives it ("NVIDIA H200"), each FP8 kernel's batch routes
    on that model too (decode- and prefill-sized batches its tuned file hands to other kernels)."""
    ckpt = BrecciaCheckpoint.open(path)
    ckpt.check_scale_values()
    target = Target.here() if capability is None else Target.gpu(capability)
    where = f"this machine ({target})" if capability is None else f"sm_{capability}"
    where += f" ({gpu}'s batch routes)" if gpu else ""
    rows = [("tensor", "recipe/layout", "shape", "bytes", f"kernel on {where}, {dtype}")]
    experts = [expert_weights(ckpt.entries, prefix) for prefix in moe_prefixes(ckpt.entries)]
    in_experts = {e.name for layer in experts for e in layer.all()}
    for name, entry in sorted(ckpt.entries.items()):
        if name in in_experts:
            continue
        out_features, in_features = entry.data.shape[-2], entry.data.shape[-1]
        spec = LinearSpec.for_entry(name, entry, in_features, (out_features,), getattr(torch, dtype), target)
        kernel = choose_kernel(spec)
        routes = describe_routes(kernel, spec, gpu) if gpu else ""
        rows.append((name, entry.label, "x".join(map(str, entry.data.shape)), _size(entry.nbytes), kernel.name + routes))
    rows += [_moe_row(layer, getattr(torch, dtype), target) for layer in experts]
    plain_bytes = sum(t.nbytes for t in ckpt.plain.values())
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    quant_bytes = sum(e.nbytes for e in ckpt.entries.values())
    lines.append(
        f"{len(ckpt.entries)} breccia tensors ({_size(quant_bytes)}), {len(ckpt.plain)} high-precision "
        f"tensors ({_size(plain_bytes)}) in {len(ckpt.files)} file(s): OK"
    )
    return "\n".join(lines)


def _moe_row(layer, dtype, target) -> tuple:
    """One row per MoE layer: its experts run as one fused kernel. Shape: experts x (gate/up
    rows, hidden) + (hidden, expert intermediate)."""
    first = layer.entries[min(layer.entries)]
    inter, hidden = first["w1"].data.shape
    spec = MoESpec.for_experts(layer.prefix, layer.first, layer.num_experts, hidden, inter, dtype, target)
    shape = f"{layer.num_experts}x({2 * inter}x{hidden}+{hidden}x{inter})"
    return (f"{layer.prefix} (MoE)", layer.first.label, shape, _size(sum(e.nbytes for e in layer.all())),
            choose_moe_kernel(spec).name)


def _size(n: int) -> str:
    return f"{n / 2**20:.2f}MiB" if n >= 2**20 else f"{n / 2**10:.1f}KiB"
