"""Converters between breccia checkpoints and the FP8 formats people already have.

Into breccia (``convert_to_breccia``):
- ``deepseek-fp8``: DeepSeek-V3 style, ``X.weight`` F8_E4M3 + ``X.weight_scale_inv`` fp32 with
  one scale per 128 x 128 block (``weight_block_size`` in config.json), edge blocks partial.
  breccia's own DeepSeek bridge assumes 1 x 128 blocks; we expand each block scale over its
  rows, which is exact, and hand the result to ``breccia.bridges.from_deepseek_v3``.
- ``compressed-tensors-fp8``: llm-compressor ``float-quantized`` FP8, ``X.weight_scale`` per
  tensor (``Float8CurrentScaling``) or per channel (``Float8BlockScaling(block_k=K)``, one scale
  per row). Static ``input_scale`` tensors are dropped (breccia-sglang quantizes activations
  dynamically) and reported.
- ``awq`` / ``gptq`` / ``compressed-tensors-int4``: AutoAWQ, GPTQ and llm-compressor W4A16
  (``int4_sources.py``): codes, zero points and scales moved into breccia's INT4 exactly;
  act-order, other bit widths and quantized activations are refused.
Out of breccia (``export_sglang_fp8``): SGLang's native FP8 layout (``quant_method: fp8``):
per-tensor ``weight_scale``, or 128 x 128 ``weight_scale_inv`` when every 128 rows share their
scales (as after ``deepseek-fp8``). Codes and scales are copied bit for bit both ways; what a
format cannot hold is refused or kept high precision, and always reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import breccia
import torch
from breccia.bridges import from_deepseek_v3, load_safetensors
from safetensors import safe_open
from tqdm import tqdm

from .. import names
from ..errors import BrecciaCheckpointError
from .int4_sources import INT4_SOURCE_FORMATS, INT4_SOURCES, check_int4_config
from .reader import BrecciaCheckpoint, weight_files
from .recipe_json import describe
from .writer import ShardWriter, atomic_output_dir, check_paths, write_metadata_files

SOURCE_FORMATS = ("deepseek-fp8", "compressed-tensors-fp8") + INT4_SOURCE_FORMATS
FP8 = torch.float8_e4m3fn


@dataclass
class ConvertReport:
    converted: list = field(default_factory=list)  # (name, label)
    kept: list = field(default_factory=list)  # (name, reason): stored high precision
    dropped: list = field(default_factory=list)  # (name, reason): not needed by the target
    copied: int = 0
    notes: list = field(default_factory=list)  # what the user must know to serve the result


class _Tensors:
    """Every tensor of a checkpoint by name, read one at a time."""

    def __init__(self, directory: Path, file_of: dict[str, str] | None = None):
        self.directory, self.file_of, self.handles = directory, dict(file_of or {}), {}
        if file_of is None:
            for file in weight_files(directory):
                with safe_open(str(directory / file), framework="pt") as f:
                    self.file_of.update({name: file for name in f.keys()})

    def __contains__(self, name):
        return name in self.file_of

    def __getitem__(self, name) -> torch.Tensor:
        file = self.file_of[name]
        if file not in self.handles:
            self.handles[file] = safe_open(str(self.directory / file), framework="pt")
        return self.handles[file].get_tensor(name)


def convert_to_breccia(src, dst, source_format: str, *, overwrite: bool = False,
                       progress: bool = True) -> ConvertReport:
    if source_format not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {source_format!r}; choose from {', '.join(SOURCE_FORMATS)}")
    src, dst = check_paths(src, dst, overwrite)
    quant_config = json.loads((src / "config.json").read_text()).get("quantization_config") or {}
    if source_format in INT4_SOURCE_FORMATS:
        check_int4_config(source_format, quant_config, str(src / "config.json"))
    tensors, report = _Tensors(src), ConvertReport()
    convert_one = {"deepseek-fp8": _fp8_tensor(_deepseek_entry),
                   "compressed-tensors-fp8": _fp8_tensor(_compressed_tensors_entry)}.get(source_format)
    convert_one = convert_one or _int4_tensor(INT4_SOURCES[source_format])
    with atomic_output_dir(dst) as tmp:
        writer = ShardWriter(tmp)
        for name in tqdm(list(tensors.file_of), desc="convert", unit="tensor", disable=not progress):
            convert_one(name, tensors, quant_config, writer, report)
        writer.finish()
        write_metadata_files(src, tmp, {"quant_method": names.QUANT_METHOD, "converted_from": source_format})
    if source_format in INT4_SOURCE_FORMATS and report.converted:
        report.notes.append(INT4_ON_DISK_NOTE)
    return report


def _fp8_tensor(to_breccia):
    """One tensor of an FP8 checkpoint: FP8 weights through ``to_breccia``, the rest copied."""

    def convert_one(name, tensors, quant_config, writer, report):
        if name.endswith((".weight_scale_inv", ".weight_scale")):
            return  # consumed with its weight
        if name.endswith(".input_scale"):
            report.dropped.append((name, "static activation scale; activations are quantized dynamically"))
            return
        tensor = tensors[name]
        if name.endswith(".weight") and tensor.dtype == FP8:
            to_breccia(name, tensor, tensors, quant_config, writer, report)
        else:
            writer.add_plain(name, tensor)
            report.copied += 1

    return convert_one


# breccia stores INT4 codes one per byte; the loader packs them two per byte again.
INT4_ON_DISK_NOTE = ("breccia stores INT4 codes one per byte, so the converted weights take about twice the "
                     "source's bytes on disk; served, they are packed two per byte again")


def _int4_tensor(source):
    """One tensor of an INT4 checkpoint (``source``: an ``Int4Source``): a layer's codes tensor
    and its parts become breccia's ``P.weight``; everything else (embeddings, norms, layers left
    unquantized, biases) is copied. A part with no codes tensor beside it is refused, not dropped."""

    def convert_one(name, tensors, quant_config, writer, report):
        part_of = next((suffix for suffix in source.parts if name.endswith(suffix)), None)
        if part_of is not None:
            owner = name.removesuffix(part_of) + source.codes
            if owner not in tensors:
                raise BrecciaCheckpointError(f"{tensors.file_of[name]}: {name!r} has no {owner!r} beside it; "
                                             "a mixed checkpoint does not convert")
            return  # consumed with its codes tensor
        if not name.endswith(source.codes):
            writer.add_plain(name, tensors[name])
            report.copied += 1
            return
        prefix = name.removesuffix(source.codes)

        def part(suffix, required=True):
            if prefix + suffix in tensors:
                return tensors[prefix + suffix]
            if required:
                raise BrecciaCheckpointError(f"{name!r} has no {prefix + suffix!r}")
            return None

        try:
            scaled = source.to_breccia(prefix, part, quant_config)
        except BrecciaCheckpointError as exc:  # every refusal names the file it read
            raise BrecciaCheckpointError(f"{tensors.file_of[name]}: {exc}") from None
        writer.add_scaled(prefix + ".weight", scaled)
        report.converted.append((prefix + ".weight", describe(scaled.recipe, scaled.layout)))

    return convert_one


def _scale_for(name, suffix, tensors):
    scale_name = name.removesuffix(".weight") + suffix
    if scale_name not in tensors:
        raise BrecciaCheckpointError(f"{tensors.file_of[name]}: FP8 tensor {name!r} has no {scale_name!r}")
    return tensors[scale_name].to(torch.float32)


def _deepseek_entry(name, data, tensors, quant_config, writer, report):
    bn, bk = quant_config.get("weight_block_size", [128, 128])
    rows, k = data.shape
    block_scales = _scale_for(name, ".weight_scale_inv", tensors)  # (ceil(rows/bn), ceil(k/bk))
    if k % bk:
        # breccia's layouts need whole K blocks; keep this weight exactly dequantized.
        row_scales = block_scales.repeat_interleave(bn, 0)[:rows].repeat_interleave(bk, 1)[:, :k]
        writer.add_plain(name, (data.to(torch.float32) * row_scales).to(torch.bfloat16))
        report.kept.append((name, f"K={k} is not a multiple of {bk}: stored dequantized (bf16)"))
        return
    # A (bn x bk) block scale is the scale of each of its rows: exact as one scale per row
    # and K block, which is breccia's PerBlockK(bk).
    scaled = from_deepseek_v3(data, block_scales.repeat_interleave(bn, 0)[:rows].contiguous(), block_k=bk)
    writer.add_scaled(name, scaled)
    report.converted.append((name, f"block(E4M3,k={bk}) from {bn}x{bk} blocks"))


def _compressed_tensors_entry(name, data, tensors, quant_config, writer, report):
    scale = _scale_for(name, ".weight_scale", tensors)
    rows, k = data.shape
    if scale.numel() == 1:
        scaled = breccia.from_buffer(data, scale.reshape(()), breccia.Float8CurrentScaling(), breccia.PerTensor())
        label = "current(E4M3)/per_tensor"
    elif tuple(scale.shape) in ((rows, 1), (rows,)):
        # One scale per output channel is one K block as wide as the row.
        scaled = breccia.from_buffer(data, scale.reshape(rows, 1), breccia.Float8BlockScaling(block_k=k),
                                     breccia.PerBlockK(k))
        label = f"block(E4M3,k={k}) per channel"
    else:
        raise BrecciaCheckpointError(
            f"{tensors.file_of[name]}: {name!r} has weight_scale shape {list(scale.shape)}; only per-tensor and "
            "per-channel FP8 (compressed-tensors strategies 'tensor' and 'channel') convert"
        )
    writer.add_scaled(name, scaled)
    report.converted.append((name, label))


def export_sglang_fp8(src, dst, *, block_n: int = 128, overwrite: bool = False) -> ConvertReport:
    """Write a breccia FP8 checkpoint in SGLang's native FP8 layout (``quant_method: fp8``)."""
    src, dst = check_paths(src, dst, overwrite)
    ckpt = BrecciaCheckpoint.open(src)
    labels = {entry.label for entry in ckpt.entries.values()}
    if len(labels) > 1:
        raise BrecciaCheckpointError(f"{src}: SGLang's FP8 config is one recipe per model, found {sorted(labels)}")
    report = ConvertReport()
    with atomic_output_dir(dst) as tmp:
        writer = ShardWriter(tmp)
        block_k = None
        for file in ckpt.files:
            for name, scaled in load_safetensors(str(src / file)).items():
                weight_scale_name, scale = _native_scale(name, scaled, block_n)
                block_k = getattr(scaled.layout, "block_size", block_k)
                writer.add_plain(name, scaled.data.view(FP8))
                writer.add_plain(name.removesuffix(".weight") + weight_scale_name, scale)
                report.converted.append((name, describe(scaled.recipe, scaled.layout)))
        tensors = _Tensors(src, {name: t.file for name, t in ckpt.plain.items()})  # headers already read
        for name in ckpt.plain:
            writer.add_plain(name, tensors[name])
            report.copied += 1
        writer.finish()
        config = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3"}
        if block_k is not None:
            config["weight_block_size"] = [block_n, block_k]
            if "LlamaForCausalLM" in json.loads((src / "config.json").read_text()).get("architectures", []):
                report.notes.append(LLAMA_BLOCK_FP8_NOTE)
        write_metadata_files(src, tmp, config)
    return report


# Seen with SGLang 0.5.23 (benchmarks/bench_load.py, tests/test_bench_load.py): its default Llama
# loader renames weight_scale_inv -> weight_scale, a parameter block FP8 layers lack, and warns
# once per tensor while loading the model without its scales.
LLAMA_BLOCK_FP8_NOTE = (
    "SGLang 0.5.23's default Llama loader drops block-FP8 scales (it renames weight_scale_inv to "
    "weight_scale and only warns); serve this checkpoint with SGLANG_ENABLE_WEIGHT_LOADER_V2=1, "
    f"or serve the breccia checkpoint with {names.FLAG}"
)


def _native_scale(name, scaled, block_n):
    recipe, layout = scaled.recipe, scaled.layout
    if getattr(recipe, "fp8_format", None) != "E4M3" or not isinstance(
        recipe, (breccia.Float8CurrentScaling, breccia.DelayedScaling, breccia.Float8BlockScaling)
    ):
        raise BrecciaCheckpointError(f"{name}: recipe {recipe.name!r} has no SGLang native FP8 layout")
    if isinstance(layout, breccia.PerTensor):
        return ".weight_scale", scaled.scale.to(torch.float32)
    rows = scaled.scale.shape[0]
    blocks = scaled.scale[::block_n]  # the first row of every block_n-row group
    if not torch.equal(blocks.repeat_interleave(block_n, 0)[:rows], scaled.scale):
        raise BrecciaCheckpointError(
            f"{name}: its {layout.block_size}-wide K blocks have a scale per row, but SGLang's block FP8 "
            f"needs {block_n} rows to share one; serve it with {names.FLAG} instead"
        )
    return ".weight_scale_inv", blocks.contiguous()
