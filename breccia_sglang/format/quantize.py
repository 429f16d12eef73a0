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
import math
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from breccia.recipes import INT4Scaling
from safetensors import safe_open
from tqdm import tqdm

from .. import names
from ..errors import BrecciaCheckpointError
from .chunked_cast import cast_workers, chunked_cast, usable_cpus
from .reader import weight_files
from .recipe_json import describe
from .recipes import PerRow, recipe_label
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
    jobs: int | None = None,
) -> QuantizeReport:
    """Quantize the linear weights of ``src`` with ``recipe`` into a new checkpoint ``dst``.

    ``overrides`` are ``(fnmatch pattern, recipe)`` pairs; the first pattern a weight's name
    matches picks its recipe (``--keep`` patterns win over both). SGLang runs q/k/v and
    gate/up as one GEMM, so give each merged group one recipe (loading says so otherwise).
    ``jobs``: processes casting MXFP8 / NVFP4 weights (``chunked_cast``), default every usable
    CPU; the checkpoint written is the same for any number.
    """
    src, dst = check_paths(src, dst, overwrite)
    refusal = why_not_quantize(src, quantization_config_of(src))
    if refusal is not None:
        raise BrecciaCheckpointError(f"{src}: quantize reads a BF16 / FP16 / FP32 checkpoint, but {refusal}")
    files = weight_files(src)
    report = QuantizeReport(recipe_label=recipe_label(recipe))
    recipes = (recipe, *(r for _, r in overrides))
    with atomic_output_dir(dst) as tmp, cast_workers(jobs or usable_cpus(), recipes) as workers:
        writer = ShardWriter(tmp)
        # Counted in elements, not tensors: an MLP weight takes thousands of times a norm's time.
        bar = tqdm(total=_element_count(src, files), desc="quantize", unit="param", unit_scale=True,
                   disable=not progress)
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
                    _quantize_one(name, tensor, chosen, keep, writer, report, workers)
                    bar.update(tensor.numel())
        bar.close()
        report.bytes_out = writer.finish()
        _write_metadata_files(src, tmp, report)
    return report


def _quantize_one(name, tensor, recipe, keep, writer, report, workers):
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
        scaled = chunked_cast(tensor.to(torch.float32), recipe, workers)
    except BrokenExecutor as exc:  # a worker was killed: most often the kernel's out-of-memory killer
        raise BrecciaCheckpointError(
            f"{name}: a cast worker process died while casting it ({exc}); nothing was written. "
            "Out of memory? Rerun with fewer --jobs") from exc
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


def _is_linear_weight(name: str, tensor: torch.Tensor) -> bool:
    return name.endswith(".weight") and tensor.ndim == 2 and tensor.is_floating_point()


def _element_count(src: Path, files: list[str]) -> int:
    """Elements of every tensor in ``files``, from their headers (nothing is read)."""
    total = 0
    for file in files:
        with safe_open(str(src / file), framework="pt") as f:
            for name in f.keys():
                total += math.prod(f.get_slice(name).get_shape())
    return total


def _write_metadata_files(src: Path, out: Path, report: QuantizeReport) -> None:
    write_metadata_files(src, out, {
        "quant_method": names.QUANT_METHOD,
        # For people reading config.json; loading reads the recipe of every tensor from
        # its own safetensors metadata, which is the single source of truth.
        "recipe": sorted(set(report.labels.values())) if len(set(report.labels.values())) > 1 else report.recipe_label,
        "kept_high_precision": [name for name, _ in report.kept],
    })


