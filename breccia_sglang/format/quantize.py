"""Write a breccia-format checkpoint from an ordinary Hugging Face safetensors checkpoint.

Every quantized weight goes through ``breccia.cast`` and ``breccia.bridges.save_safetensors``
(so the recipe travels with the data, in breccia's own convention); every other tensor is
copied unchanged. Weights a recipe cannot take (e.g. K not divisible by the block size)
are kept in high precision and reported, never dropped. Output is written to a temporary
directory and renamed into place at the end, so an interrupted run leaves nothing
half-written behind.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import breccia
import torch
from breccia.recipes import INT4Scaling
from safetensors import safe_open
from tqdm import tqdm

from .. import names
from ..errors import BrecciaCheckpointError
from .reader import weight_files
from .recipe_json import describe
from .recipes import PER_TENSOR_FP8, PerRow, recipe_label
from .sources import quantization_config_of, why_not_quantize
from .writer import ShardWriter, atomic_output_dir, check_paths, write_metadata_files

# Embeddings and the LM head stay high precision by default: SGLang serves them through
# embedding layers, not its quantized GEMM paths. So do MoE routers (Qwen / DeepSeek
# ``mlp.gate``, Mixtral ``block_sparse_moe.gate``, shared-expert gates): tiny, and their
# logits pick the experts, so a rounding there changes which weights run at all.
DEFAULT_KEEP = ("*embed_tokens*", "lm_head*", "*.embed*", "*.mlp.gate.weight", "*.block_sparse_moe.gate.weight",
                "*shared_expert_gate.weight")


@dataclass
class QuantizeReport:
    """What ``quantize_checkpoint`` did with every tensor of the source."""

    recipe_label: str
    quantized: list = field(default_factory=list)  # (name, shape)
    kept: list = field(default_factory=list)  # (name, reason)
    regrouped: list = field(default_factory=list)  # (name, reason): INT4 at a smaller group than asked
    copied: list = field(default_factory=list)  # non-weight tensors (norms, biases, ...)
    labels: dict = field(default_factory=dict)  # quantized name -> recipe/layout label
    bytes_in: int = 0
    bytes_out: int = 0


def quantize_checkpoint(
    src: str | Path,
    dst: str | Path,
    recipe,
    *,
    keep: tuple[str, ...] = DEFAULT_KEEP,
    overrides: tuple[tuple[str, object], ...] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> QuantizeReport:
    """Quantize the linear weights of ``src`` with ``recipe`` into a new checkpoint ``dst``.

    ``overrides`` are ``(fnmatch pattern, recipe)`` pairs; the first pattern a weight's name
    matches picks its recipe (``--keep`` patterns win over both). SGLang runs q/k/v and
    gate/up as one GEMM, so give each merged group one recipe (loading says so otherwise).
    """
    src, dst = check_paths(src, dst, overwrite)
    refusal = why_not_quantize(src, quantization_config_of(src))
    if refusal is not None:
        raise BrecciaCheckpointError(f"{src}: quantize reads a BF16 / FP16 / FP32 checkpoint, but {refusal}")
    files = weight_files(src)
    report = QuantizeReport(recipe_label=recipe_label(recipe))
    with atomic_output_dir(dst) as tmp:
        writer = ShardWriter(tmp)
        bar = tqdm(total=len(_tensor_names(src, files)), desc="quantize", unit="tensor", disable=not progress)
        for file in files:
            with safe_open(str(src / file), framework="pt") as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    if _is_linear_weight(name, tensor) and tensor.element_size() == 1:  # FP8 codes
                        raise BrecciaCheckpointError(
                            f"{src / file}: {name!r} is {tensor.dtype}, quantized already; quantize reads "
                            "high-precision weights (an FP8 checkpoint converts: breccia-sglang convert --help)")
                    report.bytes_in += tensor.numel() * tensor.element_size()
                    chosen = next((r for pattern, r in overrides if fnmatch.fnmatch(name, pattern)), recipe)
                    _quantize_one(name, tensor, chosen, keep, writer, report)
                    bar.update(1)
        bar.close()
        report.bytes_out = writer.finish()
        _write_metadata_files(src, tmp, report)
    return report


def _quantize_one(name, tensor, recipe, keep, writer, report):
    if not _is_linear_weight(name, tensor):
        writer.add_plain(name, tensor)
        report.copied.append((name, tuple(tensor.shape)))
        return
    if any(fnmatch.fnmatch(name, pattern) for pattern in keep):
        writer.add_plain(name, tensor)
        report.kept.append((name, "kept by --keep rule"))
        return
    if isinstance(recipe, PerRow):  # one scale per row: a block as wide as this weight's K
        recipe = recipe.for_k(tensor.shape[-1])
    recipe = _int4_group_that_fits(name, tensor, recipe, report)
    try:
        scaled = _cast(tensor.to(torch.float32), recipe)
    except ValueError as exc:  # breccia refuses shapes its layout cannot take
        writer.add_plain(name, tensor)
        report.kept.append((name, f"shape {list(tensor.shape)} not supported: {exc}"))
        return
    writer.add_scaled(name, scaled)
    report.quantized.append((name, tuple(tensor.shape)))
    report.labels[name] = describe(scaled.recipe, scaled.layout)


# INT4 groups a layer can fall back to when K does not split into the asked-for group: the
# group sizes every 4-bit kernel takes (Marlin: -1/32/64/128), largest first.
INT4_FALLBACK_GROUPS = (64, 32)


def _int4_group_that_fits(name, tensor, recipe, report):
    """INT4 whose group does not divide K (576 % 128 = 64 for a 576-wide model): the largest
    smaller standard group that does, reported; otherwise the recipe as asked (the cast refuses
    and the weight stays high precision, reported too)."""
    if not isinstance(recipe, INT4Scaling) or tensor.shape[-1] % recipe.group_size == 0:
        return recipe
    k = tensor.shape[-1]
    for group in INT4_FALLBACK_GROUPS:
        if group < recipe.group_size and k % group == 0:
            report.regrouped.append((name, f"K={k} is not a multiple of {recipe.group_size}: group {group}"))
            return dataclasses.replace(recipe, group_size=group)
    return recipe


# breccia 0.1.3 encodes MXFP8 (and FP8 on its NumPy path) by a brute-force search over all
# 256 codes: 1 KiB of temporaries per element, ~17 GB for one 4096 x 4096 weight. Every
# recipe but per-tensor FP8 scales each row on its own, so casting a few rows at a time is
# the same breccia cast with bounded memory (~256 MiB).
CAST_CHUNK_ELEMENTS = 2**18


def _cast(x: torch.Tensor, recipe) -> breccia.ScaledTensor:
    rows = max(1, CAST_CHUNK_ELEMENTS // max(1, x.shape[-1]))
    if isinstance(recipe, PER_TENSOR_FP8) or x.shape[0] <= rows:
        return breccia.cast(x, recipe)
    parts = [breccia.cast(chunk, recipe) for chunk in torch.split(x, rows)]
    zero_point = None if parts[0].zero_point is None else torch.cat([p.zero_point for p in parts])
    return breccia.from_buffer(
        torch.cat([p.data for p in parts]), torch.cat([p.scale for p in parts]), recipe, parts[0].layout, zero_point
    )


def _is_linear_weight(name: str, tensor: torch.Tensor) -> bool:
    return name.endswith(".weight") and tensor.ndim == 2 and tensor.is_floating_point()


def _tensor_names(src: Path, files: list[str]) -> list[str]:
    found = []
    for file in files:
        with safe_open(str(src / file), framework="pt") as f:
            found.extend(f.keys())
    return found


def _write_metadata_files(src: Path, out: Path, report: QuantizeReport) -> None:
    write_metadata_files(src, out, {
        "quant_method": names.QUANT_METHOD,
        # For people reading config.json; loading reads the recipe of every tensor from
        # its own safetensors metadata, which is the single source of truth.
        "recipe": sorted(set(report.labels.values())) if len(set(report.labels.values())) > 1 else report.recipe_label,
        "kept_high_precision": [name for name, _ in report.kept],
    })


