"""Converters between breccia checkpoints and the FP8 formats people already have.

Into breccia (``convert_to_breccia``):
- ``fp8`` / ``deepseek-fp8`` / ``compressed-tensors-fp8`` / ``modelopt-fp8`` / ``fbgemm-fp8``:
  SGLang's native FP8, DeepSeek-V3's block FP8, llm-compressor's, NVIDIA ModelOpt's and FBGEMM's
  FP8 (``fp8_sources.py``):
  codes and scales copied; a block-FP8 weight whose K is not whole blocks is stored dequantized;
  static activation and KV-cache scales are dropped. All reported.
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
from breccia.bridges import load_safetensors
from safetensors import safe_open
from tqdm import tqdm

from .. import names
from ..errors import BrecciaCheckpointError
from .fp8_sources import DROPPED_SCALES, FP8_SOURCE_FORMATS, WEIGHT_SCALES, check_fp8_config, fp8_weight
from .int4_sources import INT4_SOURCE_FORMATS, INT4_SOURCES, check_int4_config
from .reader import BrecciaCheckpoint, weight_files
from .sources import SOURCE_QUANT_CONFIG_FILES, described_quantization, source_format_of
from .recipe_json import describe
from .writer import ShardWriter, atomic_output_dir, check_paths, write_metadata_files

SOURCE_FORMATS = FP8_SOURCE_FORMATS + INT4_SOURCE_FORMATS
FP8 = torch.float8_e4m3fn


@dataclass
class ConvertReport:
    source_format: str | None = None  # the --from it read the source as
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


def convert_to_breccia(src, dst, source_format: str | None = None, *, overwrite: bool = False,
                       progress: bool = True) -> ConvertReport:
    """Convert checkpoint ``src`` (in ``source_format``; None: the one its quantization config
    names, ``sources.source_format_of``) into a breccia checkpoint ``dst``."""
    if source_format is not None and source_format not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {source_format!r}; choose from {', '.join(SOURCE_FORMATS)}")
    src, dst = check_paths(src, dst, overwrite)
    quant_config, described_in = described_quantization(src)
    if source_format is None:
        source_format = source_format_of(quant_config)
        if source_format is None:
            said = f"quant_method {quant_config['quant_method']!r}" if quant_config.get("quant_method") else "nothing"
            raise BrecciaCheckpointError(f"{described_in}: its quantization config says {said}, which names no format "
                                         f"convert reads; pass --from ({', '.join(SOURCE_FORMATS)})")
    check_config = check_int4_config if source_format in INT4_SOURCE_FORMATS else check_fp8_config
    check_config(source_format, quant_config, str(described_in))
    tensors, report = _Tensors(src), ConvertReport(source_format)
    if source_format in INT4_SOURCE_FORMATS:
        convert_one = _int4_tensor(INT4_SOURCES[source_format])
    else:
        convert_one = _fp8_tensor(fp8_weight(source_format))
    with atomic_output_dir(dst) as tmp:
        writer = ShardWriter(tmp)
        for name in tqdm(list(tensors.file_of), desc="convert", unit="tensor", disable=not progress):
            convert_one(name, tensors, quant_config, writer, report)
        writer.finish()
        write_metadata_files(src, tmp, {"quant_method": names.QUANT_METHOD, "converted_from": source_format},
                             skip=SOURCE_QUANT_CONFIG_FILES)
    report.dropped += [(file, "the source's quantization config; config.json now says breccia")
                       for file in SOURCE_QUANT_CONFIG_FILES if (src / file).is_file()]
    if source_format in INT4_SOURCE_FORMATS and report.converted:
        report.notes.append(INT4_ON_DISK_NOTE)
    return report


def _fp8_tensor(to_breccia):
    """One tensor of an FP8 checkpoint: FP8 weights through ``to_breccia`` (``fp8_sources``),
    static scales dropped, everything else copied."""

    def convert_one(name, tensors, quant_config, writer, report):
        if name.endswith(WEIGHT_SCALES):
            return  # consumed with its weight
        dropped = next((why for suffix, why in DROPPED_SCALES.items() if name.endswith(suffix)), None)
        if dropped is not None:
            report.dropped.append((name, dropped))
            return
        tensor = tensors[name]
        if not (name.endswith(".weight") and tensor.dtype == FP8):
            writer.add_plain(name, tensor)
            report.copied += 1
            return

        def scale_of(suffix):
            scale_name = name.removesuffix(".weight") + suffix
            if scale_name not in tensors:
                raise BrecciaCheckpointError(f"FP8 tensor {name!r} has no {scale_name!r}")
            return tensors[scale_name].to(torch.float32)

        try:
            converted, label = to_breccia(name, tensor, scale_of, quant_config)
        except BrecciaCheckpointError as exc:  # every refusal names the file it read
            raise BrecciaCheckpointError(f"{tensors.file_of[name]}: {exc}") from None
        if isinstance(converted, torch.Tensor):
            writer.add_plain(name, converted)
            report.kept.append((name, label))
        else:
            writer.add_scaled(name, converted)
            report.converted.append((name, label))

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
