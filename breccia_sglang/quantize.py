"""Write a breccia-format checkpoint from an ordinary Hugging Face safetensors checkpoint.

Every quantized weight goes through ``breccia.cast`` and ``breccia.bridges.save_safetensors``
(so the recipe travels with the data, in breccia's own convention); every other tensor is
copied unchanged. Weights a recipe cannot take (e.g. K not divisible by the block size)
are kept in high precision and reported, never dropped. Output is written to a temporary
directory and renamed into place at the end, so an interrupted run leaves nothing
half-written behind.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import breccia
import torch
from breccia.bridges import save_safetensors
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .checkpoint import INDEX_FILE, _weight_files
from .errors import BrecciaCheckpointError
from .recipe_json import describe
from .weights.gemm import PER_TENSOR_FP8

# Embeddings and the LM head stay high precision by default: SGLang serves them through
# embedding layers, not its quantized GEMM paths.
DEFAULT_KEEP = ("*embed_tokens*", "lm_head*", "*.embed*")
SHARD_BYTES = 2 * 1024**3


def make_recipe(name: str, *, block_k: int = 128, group_size: int = 128, symmetric: bool = True):
    """The breccia recipe for a CLI recipe name."""
    makers = {
        "fp8": lambda: breccia.Float8CurrentScaling(fp8_format="E4M3"),
        "fp8-delayed": lambda: breccia.DelayedScaling(fp8_format="E4M3"),
        "fp8-block": lambda: breccia.Float8BlockScaling(block_k=block_k),
        "mxfp8": lambda: breccia.MXFP8BlockScaling(),
        "nvfp4": lambda: breccia.NVFP4BlockScaling(),
        "int4": lambda: breccia.INT4Scaling(
            group_size=group_size, symmetric=symmetric, signed=symmetric
        ),
    }
    if name not in makers:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(makers)}")
    return makers[name]()


RECIPE_NAMES = ("fp8", "fp8-delayed", "fp8-block", "mxfp8", "nvfp4", "int4")


@dataclass
class QuantizeReport:
    """What ``quantize_checkpoint`` did with every tensor of the source."""

    recipe_label: str
    quantized: list = field(default_factory=list)  # (name, shape)
    kept: list = field(default_factory=list)  # (name, reason)
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
    files = _weight_files(src)
    report = QuantizeReport(recipe_label=describe(recipe, _layout_of(recipe)))
    with atomic_output_dir(dst) as tmp:
        writer = ShardWriter(tmp)
        names = _all_names(src, files)
        bar = tqdm(total=len(names), desc="quantize", unit="tensor", disable=not progress)
        for file in files:
            with safe_open(str(src / file), framework="pt") as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    report.bytes_in += tensor.numel() * tensor.element_size()
                    chosen = next((r for pattern, r in overrides if fnmatch.fnmatch(name, pattern)), recipe)
                    _quantize_one(name, tensor, chosen, keep, writer, report)
                    bar.update(1)
        bar.close()
        report.bytes_out = writer.finish()
        _write_metadata_files(src, tmp, report)
    return report


def check_paths(src, dst, overwrite: bool) -> tuple[Path, Path]:
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise BrecciaCheckpointError(f"{src}: no config.json; expected a Hugging Face checkpoint")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise BrecciaCheckpointError(f"{dst}: exists and is not empty (pass --overwrite)")
    return src, dst


@contextlib.contextmanager
def atomic_output_dir(dst: Path):
    """A temporary directory beside ``dst`` that becomes ``dst`` only if the block succeeds."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _quantize_one(name, tensor, recipe, keep, writer, report):
    if not _is_linear_weight(name, tensor):
        writer.add_plain(name, tensor)
        report.copied.append((name, tuple(tensor.shape)))
        return
    if any(fnmatch.fnmatch(name, pattern) for pattern in keep):
        writer.add_plain(name, tensor)
        report.kept.append((name, "kept by --keep rule"))
        return
    try:
        scaled = _cast(tensor.to(torch.float32), recipe)
    except ValueError as exc:  # breccia refuses shapes its layout cannot take
        writer.add_plain(name, tensor)
        report.kept.append((name, f"shape {list(tensor.shape)} not supported: {exc}"))
        return
    writer.add_scaled(name, scaled)
    report.quantized.append((name, tuple(tensor.shape)))
    report.labels[name] = describe(scaled.recipe, scaled.layout)


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


def _layout_of(recipe):
    # The layout breccia.cast produces for this recipe (for labels): cast one block of zeros.
    width = next(
        (getattr(recipe, a) for a in ("block_k", "group_size", "block_size") if hasattr(recipe, a)), 1
    )
    return breccia.cast(torch.zeros(1, width), recipe).layout


def _all_names(src: Path, files: list[str]) -> list[str]:
    names = []
    for file in files:
        with safe_open(str(src / file), framework="pt") as f:
            names.extend(f.keys())
    return names


class ShardWriter:
    """Accumulates tensors and writes ~2 GiB shards: breccia shards and plain shards."""

    def __init__(self, out: Path, shard_bytes: int = SHARD_BYTES):
        self.out, self.shard_bytes = out, shard_bytes
        self.scaled: dict = {}
        self.plain: dict = {}
        self.scaled_bytes = self.plain_bytes = 0
        self.weight_map: dict[str, str] = {}
        self.files: list[Path] = []
        self.total = 0

    def add_scaled(self, name, scaled):
        self.scaled[name] = scaled
        self.scaled_bytes += sum(_nbytes(t) for t in (scaled.data, scaled.scale, scaled.zero_point))
        if self.scaled_bytes >= self.shard_bytes:
            self._flush_scaled()

    def add_plain(self, name, tensor):
        self.plain[name] = tensor.contiguous()
        self.plain_bytes += _nbytes(tensor)
        if self.plain_bytes >= self.shard_bytes:
            self._flush_plain()

    def _next_file(self, kind: str) -> Path:
        path = self.out / f"model-{kind}-{len(self.files) + 1:05d}.safetensors"
        self.files.append(path)
        return path

    def _flush_scaled(self):
        if not self.scaled:
            return
        path = self._next_file("breccia")
        save_safetensors(self.scaled, str(path))
        for name, st in self.scaled.items():
            for part in ("data", "scale") + (("zero_point",) if st.zero_point is not None else ()):
                self.weight_map[f"{name}.{part}"] = path.name
        self.total += self.scaled_bytes
        self.scaled, self.scaled_bytes = {}, 0

    def _flush_plain(self):
        if not self.plain:
            return
        path = self._next_file("plain")
        save_file(self.plain, str(path), metadata={"format": "pt"})
        for name in self.plain:
            self.weight_map[name] = path.name
        self.total += self.plain_bytes
        self.plain, self.plain_bytes = {}, 0

    def finish(self) -> int:
        self._flush_scaled()
        self._flush_plain()
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out / INDEX_FILE).write_text(json.dumps(index, indent=2))
        return self.total


def _nbytes(t) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _write_metadata_files(src: Path, out: Path, report: QuantizeReport) -> None:
    write_metadata_files(src, out, {
        "quant_method": "breccia",
        # For people reading config.json; loading reads the recipe of every tensor from
        # its own safetensors metadata, which is the single source of truth.
        "recipe": sorted(set(report.labels.values())) if len(set(report.labels.values())) > 1 else report.recipe_label,
        "kept_high_precision": [name for name, _ in report.kept],
    })


def write_metadata_files(src: Path, out: Path, quantization_config: dict | None) -> None:
    """Copy everything that is not weights (tokenizer, chat template, generation config, ...)
    and write config.json with ``quantization_config`` (removed when None)."""
    for path in src.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name != INDEX_FILE:
            shutil.copy2(path, out / path.name)
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config, indent=2))
